"""EmergenceRecord: one measurement of EmergenceCallback, as a typed, frozen record."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emergence_lightning.functional import emergence, log10_emergence, relative_emergence
from emergence_lightning.measure import Measurement

# The dict keys `history` entries had before they were typed (and checkpoints still hold), by field.
_DICT_KEYS = {"global_step": "step", "names": "layers"}
_FIELDS_BY_KEY = {_DICT_KEYS.get(name, name): name for name in (
    "epoch", "global_step", "names", "n", "a", "E", "relative", "log10_E", "active_fraction", "parameters",
    "samples", "before_training", "E_path", "relative_path", "nonfinite_layers", "run", "expert_active",
    "idle_experts",
)}  # fmt: skip


@dataclass(frozen=True)
class EmergenceRecord(Mapping[str, Any]):
    """One measurement, as :attr:`EmergenceCallback.history` holds it.

    It also reads as the dict the history held before it was typed: ``record["E"]``,
    ``record["step"]`` (= ``global_step``), ``record["layers"]`` (= ``names``), ``dict(record)``.

    Attributes:
        epoch: training epochs completed when measured (0 before training; fractional for a
            measurement mid-epoch or a fit that ended mid-epoch).
        global_step: ``trainer.global_step`` at the measurement.
        E: emergence, exact; NaN when a tracked layer produced NaN or inf (see ``nonfinite_layers``).
        log10_E: ``log10(E + 1)`` (NaN with E).
        relative: ``E / parameters`` (NaN with no trainable parameter, or with E).
        parameters: trainable parameters, pruning masks respected.
        names: tracked layers in forward order.
        n: nodes per layer.
        a: active nodes per layer (a node that produced NaN or inf is not active).
        before_training: taken before the first training step (the epoch-0 pass).
        E_path: path-exact E on the weights' graph (``connectivity="weights"``), else None.
        active_fraction: active nodes over all nodes.
        samples: samples (rows) the layers saw.
        relative_path: ``E_path / parameters``, or None.
        nonfinite_layers: the layers that produced NaN or inf in this measurement.
        run: which ``Trainer.fit``/``validate`` of this callback took it (1, 2, ...); a callback
            reused in a second fit starts a new run, with its own epoch-0 point.
        expert_active: mixture-of-experts layers -> active units per expert (expert ``e``'s count at
            index ``e``); empty for a model without experts.
        idle_experts: the same layers -> the experts that got no token in the window (their units are
            counted inactive).
    """

    epoch: float
    global_step: int
    E: int | float
    log10_E: float
    relative: float
    parameters: int
    names: tuple[str, ...]
    n: tuple[int, ...]
    a: tuple[int, ...]
    before_training: bool = False
    E_path: int | float | None = None
    active_fraction: float = math.nan
    samples: int = 0
    relative_path: float | None = None
    nonfinite_layers: tuple[str, ...] = ()
    run: int = 1
    expert_active: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    idle_experts: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)

    @property
    def finite(self) -> bool:
        """Whether every tracked layer produced finite values (else E and its logs are NaN)."""
        return not self.nonfinite_layers

    # ---- read as the dict `history` held before ---------------------------------------------
    def __getitem__(self, key: str) -> Any:
        try:
            value = getattr(self, _FIELDS_BY_KEY[key])
        except KeyError:
            raise KeyError(key) from None
        return list(value) if isinstance(value, tuple) else value  # the history held lists

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS_BY_KEY)

    def __len__(self) -> int:
        return len(_FIELDS_BY_KEY)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict with the history's keys (what checkpoints store)."""
        return dict(self.items())

    @classmethod
    def from_history(cls, entry: Mapping[str, Any]) -> EmergenceRecord:
        """The record of one history dict, as checkpoints store it (older checkpoints included)."""
        if isinstance(entry, EmergenceRecord):
            return entry
        E = entry["E"]
        return cls(
            epoch=entry["epoch"],
            global_step=int(entry["step"]),
            E=E if isinstance(E, float) and math.isnan(E) else int(E),
            log10_E=float(entry["log10_E"]),
            relative=float(entry["relative"]),
            parameters=int(entry.get("parameters", 0)),
            names=tuple(entry["layers"]),
            n=tuple(entry["n"]),
            a=tuple(entry["a"]),
            # Checkpoints written before this key existed: epoch 0 was the pass before training.
            before_training=bool(entry.get("before_training", entry["epoch"] == 0)),
            E_path=entry.get("E_path"),
            active_fraction=float(entry.get("active_fraction", math.nan)),
            samples=int(entry.get("samples", 0)),
            relative_path=entry.get("relative_path"),
            nonfinite_layers=tuple(entry.get("nonfinite_layers", ())),
            run=int(entry.get("run", 1)),
            expert_active={name: tuple(counts) for name, counts in entry.get("expert_active", {}).items()},
            idle_experts={name: tuple(experts) for name, experts in entry.get("idle_experts", {}).items()},
        )


def in_training_E(history: Sequence[EmergenceRecord]) -> list[int | float]:
    """E of the latest run's measurements after training started, oldest first."""
    run = history[-1].run if history else 1
    return [record.E for record in history if record.run == run and not record.before_training]


def record_of(
    measurement: Measurement,
    *,
    variant: str,
    parameters: int,
    global_step: int,
    epoch: float,
    before_training: bool,
    run: int,
    E_path: int | None = None,
) -> EmergenceRecord:
    """The record of one measurement. A layer that produced NaN or inf makes E (and its logs) NaN:
    its nodes count as inactive, and a diverged network must never read as E = 0 ("converged").
    """
    nonfinite = tuple(layer.name for layer in measurement.layers if layer.nonfinite_nodes)
    E = math.nan if nonfinite else emergence(measurement.n, measurement.a, variant=variant)
    if E_path is not None and nonfinite:
        E_path = math.nan  # type: ignore[assignment]
    return EmergenceRecord(
        epoch=epoch,
        global_step=global_step,
        E=E,
        log10_E=log10_emergence(E),
        relative=_relative(E, parameters),
        parameters=parameters,
        names=tuple(measurement.names),
        n=tuple(measurement.n),
        a=tuple(measurement.a),
        before_training=before_training,
        E_path=E_path,
        active_fraction=measurement.active_fraction,
        samples=measurement.samples,
        relative_path=_relative(E_path, parameters) if E_path is not None else None,
        nonfinite_layers=nonfinite,
        run=run,
        # Mixture-of-experts layers: active units per expert, and the experts that got no token.
        expert_active={
            layer.name: tuple(layer.expert_active) for layer in measurement.layers if layer.experts
        },
        idle_experts={layer.name: tuple(layer.idle_experts) for layer in measurement.layers if layer.experts},
    )


def _relative(E: int | float, parameters: int) -> float:
    """E~ = E / P; NaN with no trainable parameter or a NaN E."""
    if not parameters or (isinstance(E, float) and math.isnan(E)):
        return math.nan
    return relative_emergence(E, parameters)  # type: ignore[arg-type]
