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
- ``"mean_abs"``: the mean of ``|a|``. Summed as ``sum(a) - 2 * sum(min(a, 0))``: on an output that
  is never negative (ReLU, ReLU6, sigmoid) the second sum is exactly 0, so the activity is
  bit for bit the paper's mean and the same nodes are active.
- ``"normalized_mean_abs"``: ReDo's dormancy score (Sokar et al. 2023), a node's mean ``|a|``
  divided by the mean of that over the layer's nodes; the threshold is ReDo's ``tau`` (a node is
  dormant at or below it; the literature uses 0.025-0.1).
- ``"fraction"``: the share of samples and positions on which the output exceeds the threshold.
- ``"max"``: the largest output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from emergence_lightning import _compat

#: The per-node statistics (a ``Literal`` so that LightningCLI shows the choices).
Statistic = Literal["mean", "mean_abs", "normalized_mean_abs", "fraction", "max"]
STATISTICS: tuple[str, ...] = get_args(Statistic)
# The rule the tracker, measure() and EmergenceCallback use unless told otherwise; the study behind
# the choice is `emergence-lightning reproduce activity-rule` (docs/measure.md, "What 'active' means").
DEFAULT_STATISTIC: Statistic = "mean_abs"
# Statistics whose running total is the plain sum of the outputs, which is also the probe that
# NaN/inf propagate into: one reduction serves both.
TOTAL_IS_PROBE = ("mean",)
# Statistics accumulated as sums over samples and positions (the rest: a running max).
SUMMED = ("mean", "mean_abs", "normalized_mean_abs", "fraction")
# On CPU the firing mask is built a few samples at a time in a buffer of about this many
# elements (2 MB of float32), so it is still in cache when it is summed: 25 % less time than
# one activation-sized mask, and no page faults for a fresh buffer in every window.
CPU_MASK_ELEMENTS = 1 << 19
# Up to this many positions per sample (4x4 maps), CPU sums go through a matrix-vector product.
CPU_SHORT_POSITIONS = 16


def accumulation_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps sums over millions of samples exact enough; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _position_dims(values: Tensor, batch_dim: int, node_dim: int) -> list[int]:
    return [d for d in range(values.dim()) if d not in (batch_dim, node_dim)]


def _float_dtype(values: Tensor) -> torch.dtype:
    return torch.float64 if values.dtype == torch.float64 else torch.float32


def _per_sample_shape(values: Tensor, batch_dim: int, node_dim: int) -> tuple[int, int]:
    """Shape of a per-sample result, its dimensions in the output's order (nodes first when ``node_dim`` is)."""
    low, high = sorted((batch_dim, node_dim))
    return values.shape[low], values.shape[high]


@functools.lru_cache(maxsize=64)
def _ones(positions: int, dtype: torch.dtype) -> Tensor:
    return torch.ones(positions, dtype=dtype)


def per_sample_sums(values: Tensor, batch_dim: int, node_dim: int, out: Tensor | None = None) -> Tensor:
    """Sums over every dimension but batch and nodes (in float32; float64 input stays float64),
    in the output's order of those two: ``(samples, nodes)`` unless ``node_dim < batch_dim``.
    """
    other = _position_dims(values, batch_dim, node_dim)
    if not other:
        return values if out is None else out.copy_(values)
    positions = math.prod(values.shape[d] for d in other)
    if positions == 1:  # e.g. a 1x1 feature map: nothing to add up
        squeezed = values.squeeze(tuple(other))
        return squeezed.to(_float_dtype(values)) if out is None else out.copy_(squeezed)
    if (
        positions <= CPU_SHORT_POSITIONS
        and values.device.type == "cpu"
        and values.dtype in (torch.float32, torch.float64)
        and (batch_dim, node_dim) == (0, 1)
        and values.is_contiguous()
        and (out is None or out.is_contiguous())
    ):
        # PyTorch's CPU sum over a short innermost run is slow (2x2 maps: 1 GB/s); a
        # matrix-vector product with ones gives the same float32 sums 3x faster.
        ones = _ones(positions, values.dtype)
        flat = torch.mv(values.view(-1, positions), ones, out=None if out is None else out.view(-1))
        return flat.view(values.shape[0], values.shape[1])
    return torch.sum(values, other, dtype=_float_dtype(values), out=out)


class Scratch:
    """Reusable buffers for the intermediate results of every layer, freed when the window closes.

    The firing masks, per-sample results and per-node partial results are written into these
    buffers instead of fresh tensors: a fresh activation-sized tensor per call costs more in page
    faults than the comparison itself (on CPU 6x the time of the read), and with every
    intermediate in a buffer a hook call allocates no tensor memory at all.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}
        # Views handed out, by (slot, shape, dtype, device): a layer's shapes repeat every batch,
        # and a cached view spares two tensor operations per request.
        self.views: dict[tuple[str, tuple[int, ...], torch.dtype, torch.device], Tensor] = {}

    def take(self, slot: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A tensor of ``shape`` in ``slot``'s buffer (its contents are whatever was there)."""
        key = (slot, tuple(shape), dtype, device)
        view = self.views.get(key)
        if view is not None:
            return view
        numel = math.prod(shape)
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self.buffers[slot] = torch.empty(numel, dtype=dtype, device=device)
            self.views = {k: v for k, v in self.views.items() if k[0] != slot}  # views of the old buffer
        view = self.views[key] = buffer[:numel].view(key[1])
        return view

    def like(self, values: Tensor) -> Tensor:
        """A float mask buffer shaped as ``values`` (float64 for float64 values, else float32)."""
        return self.take("mask", values.shape, _float_dtype(values), values.device)

    def free(self) -> None:
        self.buffers.clear()
        self.views.clear()


def _chunked_sums(
    values: Tensor,
    elementwise: Callable[[Tensor, Scratch], Tensor],
    batch_dim: int,
    node_dim: int,
    scratch: Scratch,
    out: Tensor,
) -> Tensor:
    """Per-sample sums of ``elementwise(chunk, scratch)`` (written into a scratch buffer) into ``out``,
    a few samples at a time on CPU so that the buffer stays in cache (shaped as :func:`per_sample_sums`).
    """
    samples = values.shape[batch_dim]
    step = max(1, samples)
    if values.device.type == "cpu" and samples:
        step = max(1, min(samples, CPU_MASK_ELEMENTS // max(1, values.numel() // samples)))
    sample_axis = 0 if batch_dim < node_dim else 1
    for index, chunk in enumerate(values.split(step, dim=batch_dim)):
        transformed = elementwise(chunk, scratch)
        per_sample_sums(
            transformed,
            batch_dim,
            node_dim,
            out=out.narrow(sample_axis, index * step, chunk.shape[batch_dim]),
        )
    return out


def firing_counts(
    values: Tensor, threshold: float, batch_dim: int, node_dim: int, scratch: Scratch, out: Tensor
) -> Tensor:
    """Per-sample counts of the positions whose value exceeds ``threshold`` (NaN never does), in
    float32 (exact below ``2**24`` positions), written into ``out`` (shaped as :func:`per_sample_sums`).
    """

    def fired(chunk: Tensor, scratch: Scratch) -> Tensor:
        return torch.gt(chunk, threshold, out=scratch.like(chunk))  # 1.0 where it fires

    return _chunked_sums(values, fired, batch_dim, node_dim, scratch, out)


def negative_sums(values: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, out: Tensor) -> Tensor:
    """Per-sample sums of ``min(a, 0)`` (exactly 0 where no value is negative), into ``out``."""

    def negative_part(chunk: Tensor, scratch: Scratch) -> Tensor:
        # In the input's dtype (clamp's out must match it): min(a, 0) is exact in any dtype, and
        # the sums that follow are float32 for bfloat16/float16 input, as for the probe.
        return torch.clamp(chunk, max=0.0, out=scratch.take("mask", chunk.shape, chunk.dtype, chunk.device))

    return _chunked_sums(values, negative_part, batch_dim, node_dim, scratch, out)


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


class NodeStatistic:
    """One layer's running statistic: a sum (mean), a sum of ``|a|`` (mean_abs, normalized_mean_abs),
    a count above threshold (fraction) or a max.
    """

    def __init__(self, statistic: str, threshold: float) -> None:
        self.statistic = statistic
        self.threshold = threshold
        self.total: Tensor | None = None
        # Per-node sum of the outputs: NaN/inf propagate into it, which is how non-finite nodes
        # are found without another pass. For the mean it is `total` itself.
        self.probe: Tensor | None = None
        self.rows = 0  # samples x positions reduced into each node (a Python int: no sync)

    def reset(self) -> None:
        self.total = self.probe = None
        self.rows = 0

    @property
    def nodes(self) -> int | None:
        return None if self.total is None else self.total.numel()

    def add(self, output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch) -> None:
        """Adds one output; raises ValueError when its node count differs from earlier outputs'.

        Every intermediate result goes into ``scratch``; only the running totals are allocated,
        once per window. Runs with ``__torch_function__`` handling off: the tracker's activation
        interception (a ``TorchFunctionMode``) need not see this bookkeeping, and each of its
        tensor operations would otherwise pay a Python call through the mode.
        """
        with _compat.DisableTorchFunction():
            self._add(output, batch_dim, node_dim, scratch)

    def _add(self, output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch) -> None:
        dtype = accumulation_dtype(output.device)
        device = output.device
        shape = _per_sample_shape(output, batch_dim, node_dim)
        nodes = output.shape[node_dim]
        if self.total is not None and self.total.numel() != nodes:
            raise ValueError(f"node count changed from {self.total.numel()} to {nodes}")
        if self.statistic == "max" and output.shape[batch_dim] == 0:
            return  # no sample, no maximum
        sample_axis = 0 if batch_dim < node_dim else 1
        # (samples, nodes) sums: the probe that NaN/inf propagate into, and the mean's numerator.
        float_dtype = _float_dtype(output)
        positions = bool(_position_dims(output, batch_dim, node_dim))
        sums = per_sample_sums(  # a 2-D output is its own per-sample result: no copy
            output,
            batch_dim,
            node_dim,
            out=scratch.take("samples", shape, float_dtype, device) if positions else None,
        )
        probe = torch.sum(sums, sample_axis, dtype=dtype, out=scratch.take("nodes", (nodes,), dtype, device))
        if self.statistic == "fraction":
            counts = firing_counts(
                output,
                self.threshold,
                batch_dim,
                node_dim,
                scratch,
                scratch.take("samples", shape, float_dtype, device),
            )
            part = torch.sum(
                counts, sample_axis, dtype=dtype, out=scratch.take("part", (nodes,), dtype, device)
            )
        elif self.statistic in ("mean_abs", "normalized_mean_abs"):
            negatives = negative_sums(
                output, batch_dim, node_dim, scratch, scratch.take("samples", shape, float_dtype, device)
            )
            part = torch.sum(
                negatives, sample_axis, dtype=dtype, out=scratch.take("part", (nodes,), dtype, device)
            )
            # sum|a| = sum(a) - 2 sum(min(a, 0)); with no negative value this is `probe` exactly.
            part.mul_(-2.0).add_(probe)
        elif self.statistic == "max":
            # Positions first, then the (small) sample dimension: one contiguous read, 3x faster
            # on CPU than one amax over batch and positions together.
            maxima = output
            if positions:
                other = _position_dims(output, batch_dim, node_dim)
                maxima = torch.amax(output, other, out=scratch.take("maxima", shape, output.dtype, device))
            part = torch.amax(maxima, sample_axis, out=scratch.take("part", (nodes,), output.dtype, device))
        else:
            part = probe
        if self.total is None or self.probe is None:
            self.total = torch.zeros(nodes, dtype=dtype, device=device)
            self.probe = (
                self.total
                if self.statistic in TOTAL_IS_PROBE
                else torch.zeros(nodes, dtype=dtype, device=device)
            )
            if self.statistic == "max":
                self.total.fill_(-math.inf)
        if self.statistic == "max":
            torch.maximum(self.total, part, out=self.total)
        else:
            self.total.add_(part)
        if self.statistic not in TOTAL_IS_PROBE:
            self.probe.add_(probe)
        self.rows += output.numel() // max(1, nodes)
