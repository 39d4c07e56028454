"""The result of a measurement window: per-node activity and active nodes of each layer. No Lightning."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field

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
    """Every tracked layer in forward order, and how many samples (rows) each layer saw.

    ``active_counts`` are the layers' active nodes when the caller counted them already (the tracker
    counts all layers in one pass); otherwise each layer's ``active`` mask is counted here.
    """

    layers: list[LayerActivity]
    samples: int
    active_counts: InitVar[Sequence[int] | None] = None
    names: list[str] = field(init=False)
    n: list[int] = field(init=False)
    a: list[int] = field(init=False)

    def __post_init__(self, active_counts: Sequence[int] | None) -> None:
        self.names = [layer.name for layer in self.layers]
        self.n = [layer.n for layer in self.layers]
        if active_counts is None:
            self.a = [layer.a for layer in self.layers]
        elif len(active_counts) != len(self.layers):
            raise ValueError(
                f"`active_counts` has {len(active_counts)} entries for {len(self.layers)} layers: {list(active_counts)[:8]}."
            )
        else:
            self.a = [int(count) for count in active_counts]

    @property
    def active_fraction(self) -> float:
        total = sum(self.n)
        return sum(self.a) / total if total else math.nan

    @property
    def idle_experts(self) -> dict[str, tuple[int, ...]]:
        """MoE layers with experts that got no token in the window -> those experts."""
        return {layer.name: layer.idle_experts for layer in self.layers if layer.idle_experts}
