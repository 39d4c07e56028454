"""Stopping rules as pure decisions over a run's per-epoch record, and their comparison.

Neither rule changes training before it fires, so on a run trained for the longer budget the
epoch each rule would have stopped at, and the accuracy it would have kept, are read off the
record exactly (training is deterministic given the seed):

- ``stop_at_zero``: :class:`emergence_lightning.EmergenceCallback` with ``stop_at_zero=True``
  stops once E has been exactly 0 for ``patience + 1`` in-training measurements (the measurement
  before training does not count).
- ``EarlyStopping(monitor="val_loss", patience=3)``: Lightning's rule; after each validation the
  loss must beat the best so far (``min_delta=0``), else a counter grows and training stops
  when it reaches ``patience``; a non-finite loss stops at once (``check_finite=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, median
from typing import Any

from emergence_lightning.functional import stops_at_zero


def stop_at_zero_epoch(E: Sequence[float], patience: int = 0) -> int | None:
    """The epoch (1-based) at which ``stop_at_zero`` stops, or None if it never does.

    Args:
        E: E after epochs 1, 2, ... (not the measurement before training).
        patience: zero measurements tolerated before stopping (the callback's ``patience``).

    Example:
        >>> stop_at_zero_epoch([5, 0, 3, 0, 0], patience=1)
        5
    """
    for epoch in range(1, len(E) + 1):
        if stops_at_zero(E[:epoch], patience):  # the callback's own rule, over the epochs so far
            return epoch
    return None


def early_stopping_epoch(val_loss: Sequence[float], patience: int = 3) -> int | None:
    """The epoch (1-based) at which Lightning's ``EarlyStopping(monitor="val_loss")`` stops, or None.

    Example:
        >>> early_stopping_epoch([1.0, 0.8, 0.9, 0.85, 0.81, 0.7], patience=3)
        5
    """
    best, wait = math.inf, 0
    for epoch, value in enumerate(val_loss, start=1):
        if not math.isfinite(value):
            return epoch
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


def compare_rules(
    records: Sequence[dict[str, Any]], es_patience: int = 3, zero_patience: int = 0
) -> dict[str, Any]:
    """Epochs saved and accuracy lost by each rule, against training the whole longer budget.

    Returns a dict with, per rule (``"stop_at_zero"``, ``"early_stopping"``): how many runs it
    stopped, mean/median epochs saved, mean/median/max accuracy lost (accuracy at the longer
    budget's end minus accuracy when stopped; negative means stopping kept a better model), and
    for E: how many runs never reached 0, and how many had E = 0 already before training.
    """
    if not records:
        raise ValueError("`records` is empty: no runs to compare the stopping rules on.")
    summary: dict[str, Any] = {"runs": len(records)}
    per_rule: dict[str, list[tuple[bool, int, float]]] = {"stop_at_zero": [], "early_stopping": []}
    never_zero = zero_at_init = 0
    for record in records:
        epochs = record["epochs"][1:]
        last = len(epochs)
        final = epochs[-1]["val_acc"]
        E = [e["E"] for e in epochs]
        never_zero += all(value != 0 for value in E)
        zero_at_init += record["epochs"][0]["E"] == 0
        for rule, epoch in (
            ("stop_at_zero", stop_at_zero_epoch(E, zero_patience)),
            ("early_stopping", early_stopping_epoch([e["val_loss"] for e in epochs], es_patience)),
        ):
            stop = last if epoch is None else epoch
            per_rule[rule].append((epoch is not None, last - stop, final - epochs[stop - 1]["val_acc"]))
    for rule, rows in per_rule.items():
        saved = [r[1] for r in rows]
        lost = [r[2] for r in rows]
        summary[rule] = {
            "stopped": sum(r[0] for r in rows),
            "epochs_saved_mean": mean(saved),
            "epochs_saved_median": median(saved),
            "accuracy_lost_mean": mean(lost),
            "accuracy_lost_median": median(lost),
            "accuracy_lost_max": max(lost),
        }
    summary["E_never_zero"] = never_zero
    summary["E_zero_at_init"] = zero_at_init
    summary["max_epochs"] = len(records[0]["epochs"]) - 1
    return summary


def with_two_layers(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose model has at least two tracked layers: with one, E is 0 whatever the weights."""
    return [r for r in records if len(r["init"]["layer_fractions"]) >= 2]
