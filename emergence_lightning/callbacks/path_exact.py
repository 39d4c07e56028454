"""EmergenceCallback's path-exact E (``connectivity="weights"``): E counted on the graph the weights define.

It keeps two input rows of the first batch it sees, to trace the model with ``torch.fx``; a model
that cannot be traced gets one warning and the dense E only, for the rest of the run.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from emergence_lightning.callbacks.probe import batch_input
from emergence_lightning.connectivity import ConnectivityError, build_edges, path_emergence
from emergence_lightning.measure import Measurement


class PathExactCounter:
    """Counts E on the weights' real graph (pruned weights are no edge, residual skips are)."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.example_input: Tensor | None = None  # two rows of a batch, to trace the weight graph
        self.untraceable = False

    def remember_input(self, batch: Any) -> None:
        """Keeps two rows of the first batch whose input tensor can be found."""
        if self.example_input is None:
            inputs = batch_input(batch)
            if inputs is not None:
                self.example_input = inputs[:2].detach().clone()

    def count(self, module: nn.Module, measurement: Measurement) -> int | None:
        """E on the weights' real graph, or None (with one warning) when the model can't be traced."""
        if self.example_input is None or self.untraceable:
            return None
        try:
            edges = build_edges(module, measurement.names, self.example_input)
        except ConnectivityError as error:
            rank_zero_warn(f"EmergenceCallback(connectivity='weights'): {error} Logging the dense E only.")
            self.untraceable = True
            return None
        return path_emergence(edges, [layer.active for layer in measurement.layers], self.variant)
