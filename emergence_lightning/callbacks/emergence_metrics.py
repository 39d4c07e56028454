"""What EmergenceCallback logs of a measurement record: each key and its value. Pure, no Lightning.

The keys (``prefix`` is ``emergence`` by default; README "What is logged" says what each means):
``{prefix}/E``, ``/relative``, ``/log10_E``, ``/active_fraction``, ``/epoch``; with path-exact
counting ``/E_path``, ``/log10_E_path``, ``/relative_path``; per layer ``/active/<layer>`` and
``/dead/<layer>``; per mixture-of-experts layer ``/expert_active/<layer>/<e>`` (active units of expert
``e``) and ``/idle_experts/<layer>`` (experts that got no token). Each measurement reaches every logger as
one record (:func:`measurement_row`), beside Lightning's own ``epoch`` column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emergence_lightning.functional import emergence_as_float, log10_emergence


def scalar_metrics(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The monitorable scalars of a record (E as a float: inf beyond float64's range)."""
    p = prefix
    metrics = {
        f"{p}/E": emergence_as_float(record["E"]),
        f"{p}/relative": record["relative"],
        f"{p}/log10_E": record["log10_E"],
        f"{p}/active_fraction": record["active_fraction"],
        f"{p}/epoch": float(record["epoch"]),
    }
    if record.get("E_path") is not None:
        metrics[f"{p}/E_path"] = emergence_as_float(record["E_path"])
        metrics[f"{p}/log10_E_path"] = log10_emergence(record["E_path"])
        metrics[f"{p}/relative_path"] = record["relative_path"]
    return metrics


def layer_metrics(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Active and dead node counts of every layer of a record."""
    metrics = {}
    for name, n, a in zip(record["layers"], record["n"], record["a"]):
        metrics[f"{prefix}/active/{name}"] = float(a)
        metrics[f"{prefix}/dead/{name}"] = float(n - a)
    return metrics


def expert_metrics(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Active units per expert and the idle-expert count of every experts layer of a record.

    In namespaces of their own (``/expert_active/``, ``/idle_experts/``), so that nothing reading
    ``/active/<layer>`` as a layer's count takes an expert for a layer, and no key can equal a layer's.
    """
    metrics = {}
    for name, active in record.get("expert_active", {}).items():
        for expert, count in enumerate(active):
            metrics[f"{prefix}/expert_active/{name}/{expert}"] = float(count)
        metrics[f"{prefix}/idle_experts/{name}"] = float(len(record["idle_experts"][name]))
    return metrics


def all_metrics(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Every logged value of a record: the monitorable scalars, the per-layer and the per-expert counts."""
    return {
        **scalar_metrics(record, prefix),
        **layer_metrics(record, prefix),
        **expert_metrics(record, prefix),
    }


def measurement_row(record: Mapping[str, Any], prefix: str, epoch: int) -> dict[str, float]:
    """One measurement as one record for every logger: :func:`all_metrics` plus ``epoch``.

    ``epoch`` is Lightning's ``trainer.current_epoch``, the value Lightning writes in its own ``epoch``
    column at the same step, so a CSV row or W&B history step joins the run's other epoch-end values;
    ``{prefix}/epoch`` is the measurement's epoch (epochs completed: 0 before training).
    """
    return {**all_metrics(record, prefix), "epoch": epoch}
