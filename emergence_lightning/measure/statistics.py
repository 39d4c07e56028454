"""Running per-node statistics of one layer, reduced from each output at the cost of one read.

Plain PyTorch, no Lightning. Each output is first reduced over its positions (pixels, tokens,
time steps) per sample in float32, which reads the activation once at full speed, and those
``(samples, nodes)`` partial results are combined in float64 across samples and batches. A float32
sum over the ``P`` positions of one sample has a relative error of at most about ``P * 2**-24`` of
the sum of absolute values (PyTorch sums pairwise, so in practice ``log2(P) * 2**-24``): below
1e-5 even for 512 x 512 positions, far under any sensible distance of an activity to ``theta``.
Firing counts per sample are exact in float32 (below ``2**24`` positions), and a max is exact.
Everything stays on the layer's device: no step waits for the host.

What a node's activity is (``statistic``; a node is active when it exceeds the threshold):

- ``"mean"``: the paper's, the mean output. Made for ReLU: it calls a tanh or GELU node with a
  negative mean dead although it carries signal.
- ``"mean_abs"``: the mean of ``|a|``. ``|a|`` is written into a buffer laid out as the output
  (same dimension order) and summed by the same reduction as the paper's mean, so on an output
  that is never negative (ReLU, ReLU6, sigmoid) the activity is bit for bit the paper's mean and
  the same nodes are active. Its running total is also the non-finite probe (``|NaN|`` is NaN,
  ``|-inf|`` is inf): one reduction per output.
- ``"normalized_mean_abs"``: ReDo's dormancy score (Sokar et al. 2023), a node's mean ``|a|``
  divided by the mean of that over the layer's nodes; the threshold is ReDo's ``tau`` (a node is
  dormant at or below it; the literature uses 0.025-0.1).
- ``"fraction"``: the share of samples and positions on which the output exceeds the threshold.
- ``"max"``: the largest output.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import torch
from torch import Tensor

from emergence_lightning import _compat
from emergence_lightning.measure.sums import (
    ABSOLUTE,
    PENDING_NODES,
    Elementwise,
    PendingSums,
    Scratch,
    Step,
    accumulation_dtype,
    fired,
    per_sample_shape,
    per_sample_step,
    per_sample_sums,
    position_dims,
    summed_into,
)

__all__ = [
    "DEFAULT_STATISTIC",
    "STATISTICS",
    "LayoutStep",
    "TOTAL_IS_PROBE",
    "NodeStatistic",
    "Scratch",
    "Statistic",
    "accumulation_dtype",
    "node_activity",
    "per_sample_sums",
]

#: The per-node statistics (a ``Literal`` so that LightningCLI shows the choices).
Statistic = Literal["mean", "mean_abs", "normalized_mean_abs", "fraction", "max"]
STATISTICS: tuple[str, ...] = get_args(Statistic)
# The rule the tracker, measure() and EmergenceCallback use unless told otherwise; the study behind
# the choice is `emergence-lightning reproduce activity-rule` (docs/measure.md, "What 'active' means").
DEFAULT_STATISTIC: Statistic = "mean_abs"
# Statistics whose running total NaN/inf propagate into (a sum of a or of |a|), so that it is also
# the probe that finds non-finite nodes: one reduction serves both.
TOTAL_IS_PROBE = ("mean", "mean_abs", "normalized_mean_abs")


def node_activity(statistic: str, total: Tensor, rows: float, finite: Tensor) -> Tensor:
    """One layer's per-node activity from a window's totals; NaN where a node saw a non-finite value.

    Args:
        statistic: one of :data:`STATISTICS`.
        total: the per-node running total (a sum, a count or a max), reduced across processes.
        rows: values reduced into each node (samples x positions).
        finite: per node, whether every value it saw was finite.
    """
    activity = total if statistic == "max" else total / rows
    activity = torch.where(finite, activity, torch.full_like(activity, math.nan))
    if statistic == "normalized_mean_abs":
        # ReDo: s_i = mean|a_i| / (1/H sum_k mean|a_k|), over the layer's finite nodes. A layer
        # whose outputs are all 0 has every node dormant (score 0), not 0/0.
        layer_mean = float(activity[finite].mean()) if bool(finite.any()) else 0.0
        activity = activity / layer_mean if layer_mean > 0 else torch.where(finite, 0.0 * activity, activity)
    return activity


# How many layouts a statistic keeps steps for: a layer repeats one or two (the last batch), an
# experts layer sees a new row count every batch.
MAX_LAYOUTS = 8


class LayoutStep:
    """One output layout's reduction into a :class:`NodeStatistic`, built on the first output of that
    layout; every later output of the layout runs it with no other Python than a call.

    It holds views of the window's scratch buffers (``generation``) and of the statistic's totals:
    usable while those buffers are the same and the statistic still adds into the same totals
    (``current`` turns False when the statistic replaces them or drops its steps). A copy (deepcopy,
    pickle) is never usable: it would add into the original's totals.
    """

    __slots__ = ("statistic", "step", "rows", "generation", "current")

    def __init__(self, statistic: NodeStatistic, step: Step, rows: int, generation: int) -> None:
        self.statistic = statistic
        self.step = step
        self.rows = rows  # samples x positions it adds to each node
        self.generation = generation
        self.current = True

    def usable(self, generation: int) -> bool:
        return self.current and self.generation == generation

    def __call__(self, output: Tensor) -> None:
        """Adds ``output`` (of this step's layout) to the statistic."""
        self.step(output)
        statistic = self.statistic
        statistic.rows += self.rows
        statistic._fresh = False

    def __reduce__(self) -> tuple:
        return (_unusable_step, ())


def _unusable_step() -> LayoutStep:
    step = LayoutStep.__new__(LayoutStep)
    step.current, step.generation = False, -1
    return step


def _transform(statistic: str, threshold: float) -> Elementwise | None:
    """What each value becomes before it is summed: ``|a|``, a firing mask, or itself (``None``)."""
    if statistic in ("mean_abs", "normalized_mean_abs"):
        return ABSOLUTE
    if statistic == "fraction":
        return fired(threshold)
    return None


class NodeStatistic:
    """One layer's running statistic: a sum (mean), a sum of ``|a|`` (mean_abs, normalized_mean_abs),
    a count above threshold (fraction) or a max.
    """

    def __init__(self, statistic: str, threshold: float) -> None:
        self.statistic = statistic
        self.threshold = threshold
        self._total: Tensor | None = None
        # Per-node sum that NaN/inf propagate into: how non-finite nodes are found without another
        # pass. The total itself for the sums (TOTAL_IS_PROBE); the plain sum of a otherwise.
        self._probe: Tensor | None = None
        self._pending: list[PendingSums] = []  # batches' sums not yet in the total or the probe
        self.rows = 0  # samples x positions reduced into each node (a Python int: no sync)
        self._fresh = True  # no output added since the last reset: the node count may change
        # Per output layout: its reduction step, for the scratch buffers of one window.
        self._steps: dict[tuple, LayoutStep] = {}

    @property
    def total(self) -> Tensor | None:
        """The per-node running total (a sum, a count or a max), every batch added so far in."""
        self._flush()
        return self._total

    @property
    def probe(self) -> Tensor | None:
        """The per-node sum that NaN and inf propagate into (the total itself for the sums)."""
        self._flush()
        return self._probe

    def _flush(self) -> None:
        for pending in self._pending:
            pending.flush()

    def reset(self) -> None:
        """Starts a new window: the totals are zeroed in place, so the steps built on them stay valid."""
        self.rows = 0
        self._fresh = True
        for pending in self._pending:
            pending.clear()
        if self._total is not None and self.statistic == "max":
            self._total.fill_(-math.inf)
        elif self._total is not None:
            self._total.zero_()  # (3x faster than fill_(0.0): it runs per layer and window)
        if self._probe is not None and self._probe is not self._total:
            self._probe.zero_()

    def __getstate__(self) -> dict:
        # Steps hold this statistic's totals and the window's buffers: a copy (deepcopy, pickle)
        # builds its own, or it would add into the original's totals.
        self._flush()
        state = self.__dict__.copy()
        state["_steps"], state["_pending"] = {}, []
        return state

    @property
    def nodes(self) -> int | None:
        return None if self._total is None else self._total.numel()

    def add(
        self, output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, non_negative: bool = False
    ) -> LayoutStep:
        """Adds one output and returns the step that added it (which adds any later output of the
        same layout, while :meth:`LayoutStep.usable`); raises ValueError when its node count differs
        from earlier outputs'.

        ``non_negative``: the output comes from an activation that never gives a negative value
        (``layers.NON_NEGATIVE_ACTIVATIONS``), so ``|a|`` need not be taken: the same sums, with
        one operation and one activation-sized write less.

        Every intermediate result goes into ``scratch``; only the running totals are allocated,
        once per window. The operations for an output's layout are chosen on its first output
        (:meth:`_step`); later outputs of that layout run them with a dictionary lookup of Python
        (a layer's hook runs between the model's own kernels, with cold caches: every line of
        Python costs several times what it costs in a loop). Runs with ``__torch_function__``
        handling off: the tracker's activation interception (a ``TorchFunctionMode``) need not
        see this bookkeeping.
        """
        with _compat.DisableTorchFunction():
            key = (
                output.shape,
                output.stride(),
                output.dtype,
                output.device,
                batch_dim,
                node_dim,
                non_negative,
            )
            found = self._steps.get(key)
            if found is None or not found.usable(scratch.generation):
                found = self._step(key, output, batch_dim, node_dim, scratch, non_negative)
            found(output)
            return found

    def _drop_steps(self) -> None:
        for step in self._steps.values():
            step.current = False  # a tracker may hold it for a layer's next output
        self._steps.clear()

    def _step(
        self, key: tuple, output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, non_negative: bool
    ) -> LayoutStep:
        nodes, device = output.shape[node_dim], output.device
        if self._total is not None and self._total.numel() != nodes:
            if not self._fresh:
                raise ValueError(f"node count changed from {self._total.numel()} to {nodes}")
            self._total = self._probe = None  # a new window of a layer whose width changed
            self._drop_steps()
            self._pending = []
        dtype = accumulation_dtype(device)
        if self._total is None or self._probe is None:
            self._total = torch.zeros(nodes, dtype=dtype, device=device)
            if self.statistic == "max":
                self._total.fill_(-math.inf)
            summed = self.statistic in TOTAL_IS_PROBE
            self._probe = self._total if summed else torch.zeros(nodes, dtype=dtype, device=device)
            if nodes <= PENDING_NODES:  # the sums (a max is no sum: its probe only)
                summed_targets = (
                    [self._probe] if self.statistic == "max" or summed else [self._total, self._probe]
                )
                self._pending = [PendingSums(target) for target in summed_targets]
        total, probe = self._total, self._probe
        pending = {id(p.target): p for p in self._pending}
        rows = output.numel() // max(1, nodes)
        if self.statistic == "max" and output.shape[batch_dim] == 0:
            step: Step = lambda values: None  # noqa: E731  # no sample, no maximum
            rows = 0
        elif self.statistic in TOTAL_IS_PROBE:  # one reduction: the sum of a or |a|, also the probe
            transform = None if non_negative else _transform(self.statistic, 0.0)
            sums = functools.partial(per_sample_step, output, batch_dim, node_dim, scratch, transform)
            step = summed_into(
                total, sums, output, batch_dim, node_dim, scratch, "part", pending.get(id(total))
            )
        else:
            plain = functools.partial(per_sample_step, output, batch_dim, node_dim, scratch, None)
            into_probe = summed_into(
                probe, plain, output, batch_dim, node_dim, scratch, "part", pending.get(id(probe))
            )
            if self.statistic == "max":
                other = self._maximum(output, batch_dim, node_dim, scratch, total)
            else:
                other = self._fraction(output, batch_dim, node_dim, scratch, total, pending.get(id(total)))

            def step(values: Tensor) -> None:
                into_probe(values)
                other(values)

        generation = scratch.generation  # after the buffers above were taken (a larger one renews it)
        if len(self._steps) >= MAX_LAYOUTS:
            self._drop_steps()
        found = self._steps[key] = LayoutStep(self, step, rows, generation)
        return found

    def _fraction(
        self,
        output: Tensor,
        batch_dim: int,
        node_dim: int,
        scratch: Scratch,
        total: Tensor,
        pending: PendingSums | None,
    ) -> Step:
        counts = functools.partial(
            per_sample_step, output, batch_dim, node_dim, scratch, fired(self.threshold)
        )
        return summed_into(total, counts, output, batch_dim, node_dim, scratch, "counts", pending)

    @staticmethod
    def _maximum(output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, total: Tensor) -> Step:
        # Positions first, then the (small) sample dimension: one contiguous read, 3x faster on
        # CPU than one amax over batch and positions together.
        other, axis = position_dims(output, batch_dim, node_dim), 0 if batch_dim < node_dim else 1
        shape = per_sample_shape(output, batch_dim, node_dim)
        maxima = scratch.take("maxima", shape, output.dtype, output.device) if other else None
        peak = scratch.take("peak", (total.numel(),), output.dtype, output.device)

        if other and output.shape[batch_dim] == 1:  # one sample: its maxima are the peak

            def one_sample(values: Tensor) -> None:
                torch.maximum(total, torch.amax(values, other, out=maxima).view(-1), out=total)

            return one_sample

        def step(values: Tensor) -> None:
            per_sample = torch.amax(values, other, out=maxima) if other else values
            torch.maximum(total, torch.amax(per_sample, axis, out=peak), out=total)

        return step
