"""The result of a measurement window: per-node activity and active nodes of each layer. No Lightning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LayerActivity:
    """One layer's nodes after a measurement window."""

    name: str
    activity: Tensor  # per-node statistic (float64, CPU); NaN where the node saw a non-finite value
    active: Tensor  # bool per node
    nonfinite_nodes: int  # nodes that produced NaN or inf at least once (counted as inactive)
    experts: int = 0  # an MoE block's experts (nodes expert-major), 0 for any other layer
    idle_experts: tuple[int, ...] = ()  # experts that got no token in the window (NaN, inactive)

    @property
    def n(self) -> int:
        return int(self.activity.numel())

    @property
    def expert_active(self) -> list[int]:
        """Active nodes per expert of an MoE layer (empty for any other layer)."""
        return [int(part.sum()) for part in self.active.chunk(self.experts)] if self.experts else []

    @property
    def a(self) -> int:
        return int(self.active.sum())


@dataclass
class Measurement:
    """Every tracked layer in forward order, and how many samples (rows) each layer saw."""

    layers: list[LayerActivity]
    samples: int
    names: list[str] = field(init=False)
    n: list[int] = field(init=False)
    a: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [layer.name for layer in self.layers]
        self.n = [layer.n for layer in self.layers]
        self.a = [layer.a for layer in self.layers]

    @property
    def active_fraction(self) -> float:
        total = sum(self.n)
        return sum(self.a) / total if total else math.nan

    @property
    def idle_experts(self) -> dict[str, tuple[int, ...]]:
        """MoE layers with experts that got no token in the window -> those experts."""
        return {layer.name: layer.idle_experts for layer in self.layers if layer.idle_experts}
