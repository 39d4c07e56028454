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
# Statistics whose running total NaN/inf propagate into (a sum of a or of |a|), so that it is also
# the probe that finds non-finite nodes: one reduction serves both.
TOTAL_IS_PROBE = ("mean", "mean_abs", "normalized_mean_abs")
# Statistics accumulated as sums over samples and positions (the rest: a running max).
SUMMED = ("mean", "mean_abs", "normalized_mean_abs", "fraction")
# On CPU the firing mask is built a few samples at a time in a buffer of about this many
# elements (2 MB of float32), so it is still in cache when it is summed: 25 % less time than
# one activation-sized mask, and no page faults for a fresh buffer in every window.
CPU_MASK_ELEMENTS = 1 << 19
# Scratch buffers that hold at most this much in all are kept from one window to the next.
SCRATCH_KEPT_BYTES = 16 << 20
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


def dense_strides(shape: Sequence[int], strides: Sequence[int]) -> tuple[int, ...]:
    """Strides of a dense tensor of ``shape`` whose dimensions lie in memory in the order of
    ``strides`` (the strides themselves when those are dense, as ``torch.empty_like`` gives).
    """
    step, dense = 1, [0] * len(shape)
    for dim in sorted(range(len(shape)), key=lambda d: (strides[d], shape[d])):  # innermost first
        dense[dim] = step
        step *= max(1, shape[dim])
    return tuple(dense)


class Scratch:
    """Reusable buffers for the intermediate results of every layer, freed when the window closes.

    The transformed values (|a|, firing masks), per-sample results and per-node partial results
    are written into these buffers instead of fresh tensors: a fresh activation-sized tensor per
    call costs more in page faults than the arithmetic itself (on CPU 6x the time of the read),
    and with every intermediate in a buffer a hook call allocates no tensor memory at all.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}
        # Views handed out, by (slot, shape, dtype, device, strides): a layer's shapes repeat every
        # batch, and a cached view spares two tensor operations per request.
        self.views: dict[tuple, Tensor] = {}
        # Renewed whenever a buffer is replaced (a larger one was needed) or freed: the reduction
        # steps that hold views of the old buffers are then built again.
        self.generation = 0

    def take(
        self,
        slot: str,
        shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
        strides: tuple[int, ...] | None = None,
    ) -> Tensor:
        """A tensor of ``shape`` (contiguous, or with ``strides``) in ``slot``'s buffer (its contents
        are whatever was there).
        """
        key = (slot, tuple(shape), dtype, device, strides)
        view = self.views.get(key)
        if view is not None:
            return view
        if strides is None:
            numel = math.prod(shape)
        else:  # the storage the strides reach (a view with gaps reaches past its elements)
            numel = 0 if 0 in shape else 1 + sum((size - 1) * step for size, step in zip(shape, strides))
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self.buffers[slot] = torch.empty(numel, dtype=dtype, device=device)
            self.views = {k: v for k, v in self.views.items() if k[0] != slot}  # views of the old buffer
            self.generation += 1
        flat = buffer[:numel]
        view = flat.view(key[1]) if strides is None else flat.as_strided(key[1], strides)
        self.views[key] = view
        return view

    def laid_out_as(self, slot: str, values: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """A buffer with the shape and strides of ``values``, so that a reduction over it runs exactly
        as the same reduction over ``values`` (the same kernel, the same order of additions).
        """
        strides = None if values.is_contiguous() else values.stride()
        if strides is not None and any(step == 0 and size > 1 for size, step in zip(values.shape, strides)):
            strides = dense_strides(values.shape, strides)  # an expanded view: written to, it would overlap
        return self.take(slot, values.shape, dtype or values.dtype, values.device, strides)

    def free(self) -> None:
        self.buffers.clear()
        self.views.clear()
        self.generation += 1

    def trim(self) -> None:
        """At a window's end: frees the buffers unless they hold at most ``SCRATCH_KEPT_BYTES`` in
        all. Kept, the next window's reduction steps need not be built again (each costs tens of
        microseconds per layer); freed, no activation-sized buffer outlives its window.
        """
        if self.bytes() > SCRATCH_KEPT_BYTES:
            self.free()

    def bytes(self) -> int:
        return sum(buffer.numel() * buffer.element_size() for buffer in self.buffers.values())


def _chunk_samples(values: Tensor, batch_dim: int) -> int:
    """Samples per chunk: on CPU, about CPU_MASK_ELEMENTS elements (a buffer that stays in cache),
    when the batch is the outermost dimension in memory (a chunk is then one compact block).
    """
    samples = values.shape[batch_dim]
    outermost = all(
        values.stride(batch_dim) >= step for size, step in zip(values.shape, values.stride()) if size > 1
    )
    if values.device.type != "cpu" or not samples or not outermost:
        return max(1, samples)
    return max(1, min(samples, CPU_MASK_ELEMENTS // max(1, values.numel() // samples)))


def _chunked_sums(
    values: Tensor,
    elementwise: Elementwise | None,
    batch_dim: int,
    node_dim: int,
    scratch: Scratch,
    out: Tensor,
) -> Tensor:
    """Per-sample sums of ``elementwise(chunk, scratch)`` (written into a scratch buffer; ``None``:
    the values themselves) into ``out``, a few samples at a time on CPU so that the buffer stays in
    cache (shaped as :func:`per_sample_sums`; a 2-D output is returned transformed, not summed).
    Every statistic's sums are chunked alike, so that the same values are always added up in the
    same order, whatever the statistic.
    """
    if not _position_dims(values, batch_dim, node_dim):  # a 2-D output: its own per-sample result
        return values if elementwise is None else elementwise(values, scratch)
    step = _chunk_samples(values, batch_dim)
    if step >= values.shape[batch_dim]:
        transformed = values if elementwise is None else elementwise(values, scratch)
        return per_sample_sums(transformed, batch_dim, node_dim, out=out)
    sample_axis = 0 if batch_dim < node_dim else 1
    for index, chunk in enumerate(values.split(step, dim=batch_dim)):
        per_sample_sums(
            chunk if elementwise is None else elementwise(chunk, scratch),
            batch_dim,
            node_dim,
            out=out.narrow(sample_axis, index * step, chunk.shape[batch_dim]),
        )
    return out


class Elementwise:
    """What each value becomes before it is summed (``|a|``, a firing mask), written into the
    window's ``"mask"`` buffer laid out as the values.
    """

    def __init__(self, function: Callable[..., Tensor], float_mask: bool) -> None:
        self.function = function
        self.float_mask = float_mask  # a float32/float64 mask whatever the values' dtype

    def _buffer(self, values: Tensor, scratch: Scratch) -> Tensor:
        return scratch.laid_out_as("mask", values, _float_dtype(values) if self.float_mask else None)

    def __call__(self, chunk: Tensor, scratch: Scratch) -> Tensor:
        return self.function(chunk, out=self._buffer(chunk, scratch))

    def bound(self, output: Tensor, scratch: Scratch) -> Callable[[Tensor], Tensor]:
        """The same for every output laid out as ``output``, its buffer chosen once."""
        function, out = self.function, self._buffer(output, scratch)
        return lambda values: function(values, out=out)


def _fired(threshold: float) -> Elementwise:
    # 1.0 where the value exceeds threshold (NaN never does)
    return Elementwise(lambda values, out: torch.gt(values, threshold, out=out), float_mask=True)


# In the input's dtype (|a| is exact in any dtype): its sums are then those of the values wherever
# no value is negative, float32 for bfloat16/float16 input as for the plain sums.
_absolute = Elementwise(torch.abs, float_mask=False)


def firing_counts(
    values: Tensor, threshold: float, batch_dim: int, node_dim: int, scratch: Scratch, out: Tensor
) -> Tensor:
    """Per-sample counts of the positions whose value exceeds ``threshold`` (NaN never does), in
    float32 (exact below ``2**24`` positions), written into ``out`` (shaped as :func:`per_sample_sums`).
    """
    return _chunked_sums(values, _fired(threshold), batch_dim, node_dim, scratch, out)


def absolute_sums(values: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, out: Tensor) -> Tensor:
    """Per-sample sums of ``|a|``, into ``out``: bit for bit the sums of ``a`` where no value is negative."""
    return _chunked_sums(values, _absolute, batch_dim, node_dim, scratch, out)


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


# A layer's per-batch float64 sums go into this many rows of a pending buffer and are added to its
# total together: one tensor operation per batch instead of two (a sum, then an add), for layers of
# at most PENDING_NODES nodes (the buffer is PENDING_ROWS x nodes float64 per summed total).
PENDING_ROWS = 8
PENDING_NODES = 8192
# How many layouts a statistic keeps steps for: a layer repeats one or two (the last batch), an
# experts layer sees a new row count every batch.
MAX_LAYOUTS = 8

# A step: one output's reduction into a layer's running totals, built once per layout and window
# (what it returns is not used).
Step = Callable[[Tensor], object]


def _transform(statistic: str, threshold: float) -> Elementwise | None:
    """What each value becomes before it is summed: ``|a|``, a firing mask, or itself (``None``)."""
    if statistic in ("mean_abs", "normalized_mean_abs"):
        return _absolute
    if statistic == "fraction":
        return _fired(threshold)
    return None


def _per_sample_step(
    output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, transform: Elementwise | None
) -> Callable[[Tensor], Tensor]:
    """A function from an output of this layout to its ``(samples, nodes)`` sums of ``transform``'d
    values (a 2-D output: the values themselves, transformed), with every buffer and dimension list
    chosen once: the same operations, in the same order, as :func:`_chunked_sums` runs, with none
    of its Python per call.
    """
    other = _position_dims(output, batch_dim, node_dim)
    if not other:  # a 2-D output is its own per-sample result
        return (lambda values: values) if transform is None else transform.bound(output, scratch)
    dtype = _float_dtype(output)
    samples = scratch.take("samples", _per_sample_shape(output, batch_dim, node_dim), dtype, output.device)
    if _chunk_samples(output, batch_dim) < output.shape[batch_dim]:  # a large output on CPU
        return lambda values: _chunked_sums(values, transform, batch_dim, node_dim, scratch, samples)
    apply = (lambda values: values) if transform is None else transform.bound(output, scratch)
    transformed = apply(output)  # what the sums will read, for the choice of path below
    positions = math.prod(output.shape[d] for d in other)
    short = (
        positions <= CPU_SHORT_POSITIONS
        and output.device.type == "cpu"
        and transformed.dtype in (torch.float32, torch.float64)
        and (batch_dim, node_dim) == (0, 1)
        and transformed.is_contiguous()
    )
    if positions == 1 or short:  # as per_sample_sums: a squeeze, or a matrix-vector product with ones
        return lambda values: per_sample_sums(apply(values), batch_dim, node_dim, out=samples)
    return lambda values: torch.sum(apply(values), other, dtype=dtype, out=samples)


class PendingSums:
    """Float64 sums over samples of one batch each, waiting in the rows of a small buffer until
    :data:`PENDING_ROWS` are there, then added to ``target`` at once (and whenever it is read).
    The additions then come in another order than one batch at a time (float64 rounding apart, the
    same value), always the same for the same batches, whatever the statistic.
    """

    def __init__(self, target: Tensor) -> None:
        self.target = target
        self.buffer = torch.zeros(PENDING_ROWS, target.numel(), dtype=target.dtype, device=target.device)
        self.rows = list(self.buffer.unbind(0))  # views, so a step picks its row with no tensor operation
        self.filled = 0

    def flush(self) -> None:
        if self.filled:
            self.target.add_(self.buffer[: self.filled].sum(0))
            self.filled = 0


def _summed_into(
    target: Tensor,
    sums: Callable[[Tensor], Tensor],
    output: Tensor,
    batch_dim: int,
    node_dim: int,
    scratch: Scratch,
    slot: str,
    pending: PendingSums | None = None,
) -> Step:
    """A step adding the float64 sum over samples of ``sums(values)`` to ``target`` (through
    ``pending`` when given).
    """
    axis, dtype = 0 if batch_dim < node_dim else 1, target.dtype
    if output.shape[batch_dim] == 1 and _position_dims(output, batch_dim, node_dim):
        # One sample: its float32 sums are widened as they are added, which is what a float64 sum
        # over that one row gives, with one operation less. They are always in the same buffer.
        row = sums(output).view(-1)

        def one_sample(values: Tensor) -> None:
            sums(values)
            target.add_(row)

        return one_sample
    if pending is not None:
        rows, full = pending.rows, PENDING_ROWS - 1

        def into_pending(values: Tensor) -> None:
            filled = pending.filled
            torch.sum(sums(values), axis, dtype=dtype, out=rows[filled])
            if filled == full:
                pending.filled = PENDING_ROWS
                pending.flush()
            else:
                pending.filled = filled + 1

        return into_pending
    part = scratch.take(slot, (target.numel(),), dtype, target.device)
    return lambda values: target.add_(torch.sum(sums(values), axis, dtype=dtype, out=part))


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
        # Per output layout: its reduction step and the rows it adds, for the scratch buffers of
        # one window (a step holds views of them and of the totals).
        self._steps: dict[tuple, tuple[Step, int, int]] = {}

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
            pending.filled = 0
        if self._total is not None:
            self._total.fill_(-math.inf if self.statistic == "max" else 0.0)
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
    ) -> None:
        """Adds one output; raises ValueError when its node count differs from earlier outputs'.

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
            if found is None or found[2] != scratch.generation:
                found = self._step(key, output, batch_dim, node_dim, scratch, non_negative)
            step, rows, _ = found
            step(output)
            self.rows += rows
            self._fresh = False

    def _step(
        self, key: tuple, output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, non_negative: bool
    ) -> tuple[Step, int, int]:
        nodes, device = output.shape[node_dim], output.device
        if self._total is not None and self._total.numel() != nodes:
            if not self._fresh:
                raise ValueError(f"node count changed from {self._total.numel()} to {nodes}")
            self._total = self._probe = None  # a new window of a layer whose width changed
            self._steps.clear()
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
            sums = _per_sample_step(output, batch_dim, node_dim, scratch, transform)
            step = _summed_into(
                total, sums, output, batch_dim, node_dim, scratch, "part", pending.get(id(total))
            )
        else:
            plain = _per_sample_step(output, batch_dim, node_dim, scratch, None)
            into_probe = _summed_into(
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
            self._steps.clear()
        found = self._steps[key] = (step, rows, generation)
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
        counts = _per_sample_step(output, batch_dim, node_dim, scratch, _fired(self.threshold))
        return _summed_into(total, counts, output, batch_dim, node_dim, scratch, "counts", pending)

    @staticmethod
    def _maximum(output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, total: Tensor) -> Step:
        # Positions first, then the (small) sample dimension: one contiguous read, 3x faster on
        # CPU than one amax over batch and positions together.
        other, axis = _position_dims(output, batch_dim, node_dim), 0 if batch_dim < node_dim else 1
        shape = _per_sample_shape(output, batch_dim, node_dim)
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
