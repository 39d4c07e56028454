"""EmergenceRecord: one measurement of EmergenceCallback, as a typed, frozen record."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EmergenceRecord:
    """One measurement: what :attr:`EmergenceCallback.history` holds as a dict, typed.

    Attributes:
        epoch: training epochs completed when measured (0 before training; fractional for a
            validation run mid-epoch or a fit that ended mid-epoch).
        global_step: ``trainer.global_step`` at the measurement.
        E: emergence, exact.
        log10_E: ``log10(E + 1)``.
        relative: ``E / parameters`` (NaN with no trainable parameter).
        parameters: trainable parameters, pruning masks respected.
        names: tracked layers in forward order.
        n: nodes per layer.
        a: active nodes per layer.
        before_training: taken before the first training step (the epoch-0 pass).
        E_path: path-exact E on the weights' graph (``connectivity="weights"``), else None.
        active_fraction: active nodes over all nodes.
        samples: samples (rows) the layers saw.
        relative_path: ``E_path / parameters``, or None.
        expert_active: mixture-of-experts layers -> active units per expert (expert ``e``'s count at
            index ``e``); empty for a model without experts.
        idle_experts: the same layers -> the experts that got no token in the window (their units are
            counted inactive).
    """

    epoch: float
    global_step: int
    E: int
    log10_E: float
    relative: float
    parameters: int
    names: tuple[str, ...]
    n: tuple[int, ...]
    a: tuple[int, ...]
    before_training: bool = False
    E_path: int | None = None
    active_fraction: float = math.nan
    samples: int = 0
    relative_path: float | None = None
    expert_active: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    idle_experts: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)

    @classmethod
    def from_history(cls, entry: Mapping[str, Any]) -> EmergenceRecord:
        """The record of one :attr:`EmergenceCallback.history` dict (older checkpoints included)."""
        return cls(
            epoch=entry["epoch"],
            global_step=int(entry["step"]),
            E=int(entry["E"]),
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
            expert_active={name: tuple(counts) for name, counts in entry.get("expert_active", {}).items()},
            idle_experts={name: tuple(experts) for name, experts in entry.get("idle_experts", {}).items()},
        )
