"""How one layer output is summed: per sample in float32, across samples in float64, in the
window's reusable buffers. Plain PyTorch, no Lightning.

Each output is first reduced over its positions (pixels, tokens, time steps) per sample in
float32, which reads the activation once at full speed; those ``(samples, nodes)`` partial
results are combined in float64 across samples and batches, so that the counts do not depend on
how samples are split into batches or processes. :class:`Scratch` holds the intermediate
results; :func:`per_sample_step` and :func:`summed_into` build, once per output layout, the few
tensor operations that a layer's every later output of that layout runs.
:mod:`~emergence_lightning.measure.statistics` says what is summed (the statistic).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# A step: one output's reduction into a layer's running totals, built once per layout and window
# (what it returns is not used).
Step = Callable[[Tensor], object]
# On CPU the firing mask is built a few samples at a time in a buffer of about this many
# elements (2 MB of float32), so it is still in cache when it is summed: 25 % less time than
# one activation-sized mask, and no page faults for a fresh buffer in every window.
CPU_MASK_ELEMENTS = 1 << 19
# Scratch buffers that hold at most this much in all are kept from one window to the next.
SCRATCH_KEPT_BYTES = 16 << 20
# Up to this many positions per sample (4x4 maps), CPU sums go through a matrix-vector product.
CPU_SHORT_POSITIONS = 16

# A layer's per-batch float64 sums go into this many rows of a pending buffer and are added to its
# total together: one tensor operation per batch instead of two (a sum, then an add), for layers of
# at most PENDING_NODES nodes (the buffer is PENDING_ROWS x nodes float64 per summed total).
PENDING_ROWS = 8
PENDING_NODES = 8192


def accumulation_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps sums over millions of samples exact enough; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def position_dims(values: Tensor, batch_dim: int, node_dim: int) -> list[int]:
    return [d for d in range(values.dim()) if d not in (batch_dim, node_dim)]


def float_dtype(values: Tensor) -> torch.dtype:
    return torch.float64 if values.dtype == torch.float64 else torch.float32


def per_sample_shape(values: Tensor, batch_dim: int, node_dim: int) -> tuple[int, int]:
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
    other = position_dims(values, batch_dim, node_dim)
    if not other:
        return values if out is None else out.copy_(values)
    positions = math.prod(values.shape[d] for d in other)
    if positions == 1:  # e.g. a 1x1 feature map: nothing to add up
        squeezed = values.squeeze(tuple(other))
        return squeezed.to(float_dtype(values)) if out is None else out.copy_(squeezed)
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
    return torch.sum(values, other, dtype=float_dtype(values), out=out)


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
    if not position_dims(values, batch_dim, node_dim):  # a 2-D output: its own per-sample result
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
        return scratch.laid_out_as("mask", values, float_dtype(values) if self.float_mask else None)

    def __call__(self, chunk: Tensor, scratch: Scratch) -> Tensor:
        return self.function(chunk, out=self._buffer(chunk, scratch))

    def bound(self, output: Tensor, scratch: Scratch) -> Callable[[Tensor], Tensor]:
        """The same for every output laid out as ``output``, its buffer chosen once."""
        function, out = self.function, self._buffer(output, scratch)
        return lambda values: function(values, out=out)


def fired(threshold: float) -> Elementwise:
    # 1.0 where the value exceeds threshold (NaN never does)
    return Elementwise(lambda values, out: torch.gt(values, threshold, out=out), float_mask=True)


# In the input's dtype (|a| is exact in any dtype): its sums are then those of the values wherever
# no value is negative, float32 for bfloat16/float16 input as for the plain sums.
ABSOLUTE = Elementwise(torch.abs, float_mask=False)


def unchanged(values: Tensor) -> Tensor:
    """The per-sample sums of a 2-D output that needs no transform: the output itself."""
    return values


def per_sample_step(
    output: Tensor,
    batch_dim: int,
    node_dim: int,
    scratch: Scratch,
    transform: Elementwise | None,
    out: Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    """A function from an output of this layout to its ``(samples, nodes)`` sums of ``transform``'d
    values (a 2-D output: the values themselves, transformed), with every buffer and dimension list
    chosen once: the same operations, in the same order, as :func:`_chunked_sums` runs, with none
    of its Python per call. The sums go into ``out`` when given (shaped as
    :func:`per_sample_shape`, in :func:`float_dtype`), else into the window's ``"samples"`` buffer.
    """
    other = position_dims(output, batch_dim, node_dim)
    if not other:  # a 2-D output is its own per-sample result
        return unchanged if transform is None else transform.bound(output, scratch)
    dtype = float_dtype(output)
    shape = per_sample_shape(output, batch_dim, node_dim)
    samples = scratch.take("samples", shape, dtype, output.device) if out is None else out
    if _chunk_samples(output, batch_dim) < output.shape[batch_dim]:  # a large output on CPU
        return lambda values: _chunked_sums(values, transform, batch_dim, node_dim, scratch, samples)
    apply = unchanged if transform is None else transform.bound(output, scratch)
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


class PendingRows:
    """:data:`PENDING_ROWS` rows that steps write one batch's sums into, a row per batch; added to a
    total together (:meth:`PendingSums.flush`).
    """

    def __init__(self, nodes: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buffer = torch.zeros(PENDING_ROWS, nodes, dtype=dtype, device=device)
        self.rows = list(self.buffer.unbind(0))  # views, so a step picks its row with no tensor operation
        self.filled = 0

    def add_into(self, target: Tensor) -> None:
        """Adds the filled rows' sum (in ``target``'s dtype) to ``target`` and empties them."""
        if self.filled:
            target.add_(self.buffer[: self.filled].sum(0, dtype=target.dtype))
            self.filled = 0


class PendingSums:
    """Float64 sums over samples of one batch each, waiting in the rows of a small buffer until
    :data:`PENDING_ROWS` are there, then added to ``target`` at once (and whenever it is read).
    The additions then come in another order than one batch at a time (float64 rounding apart, the
    same value), always the same for the same batches, whatever the statistic.
    """

    def __init__(self, target: Tensor) -> None:
        self.target = target
        self.batch_sums = PendingRows(target.numel(), target.dtype, target.device)
        # Batches of one sample: their float32 sums over positions, written straight into these rows
        # by the sum itself, summed in float64 when added (see summed_into).
        self.one_sample: PendingRows | None = None

    def one_sample_rows(self, dtype: torch.dtype) -> PendingRows | None:
        """The rows one-sample batches' sums go into, in ``dtype`` (None: another dtype has them)."""
        if self.one_sample is None:
            self.one_sample = PendingRows(self.target.numel(), dtype, self.target.device)
        return self.one_sample if self.one_sample.buffer.dtype == dtype else None

    def flush(self) -> None:
        self.batch_sums.add_into(self.target)
        if self.one_sample is not None:
            self.one_sample.add_into(self.target)

    def clear(self) -> None:
        """Drops what is pending (a new window)."""
        self.batch_sums.filled = 0
        if self.one_sample is not None:
            self.one_sample.filled = 0


def summed_into(
    target: Tensor,
    sums_into: Callable[[Tensor | None], Callable[[Tensor], Tensor]],
    output: Tensor,
    batch_dim: int,
    node_dim: int,
    scratch: Scratch,
    slot: str,
    pending: PendingSums | None = None,
) -> Step:
    """A step adding the float64 sum over samples of ``sums(values)`` to ``target`` (through
    ``pending`` when given), where ``sums = sums_into(None)``; ``sums_into(out)`` is the same
    function writing its result into ``out`` (see :func:`per_sample_step`).
    """
    axis, dtype = 0 if batch_dim < node_dim else 1, target.dtype
    one_sample = output.shape[batch_dim] == 1 and bool(position_dims(output, batch_dim, node_dim))
    singles = (
        pending.one_sample_rows(float_dtype(output))
        if pending is not None and one_sample and float_dtype(output) != dtype
        else None
    )
    if pending is not None and singles is not None:
        # One sample: its float32 sums over positions are written by the sum itself into a pending
        # row, and the rows are summed in float64 when added to the total, eight at a time: one
        # tensor operation fewer per batch than adding each row to the total (the same float64
        # additions of the same float32 values, in another order).
        shape = per_sample_shape(output, batch_dim, node_dim)
        into_rows = [sums_into(row.view(shape)) for row in singles.rows]
        last = PENDING_ROWS - 1

        def one_sample_pending(values: Tensor) -> None:
            filled = singles.filled
            into_rows[filled](values)
            singles.filled = filled + 1
            if filled == last:
                pending.flush()

        return one_sample_pending
    sums = sums_into(None)
    if one_sample:
        # One sample: its float32 sums are widened as they are added, which is what a float64 sum
        # over that one row gives, with one operation less. They are always in the same buffer.
        row = sums(output).view(-1)

        def widened_as_added(values: Tensor) -> None:
            sums(values)
            target.add_(row)

        return widened_as_added
    sums = _widened(sums, output, dtype, scratch)
    if pending is not None:
        batches, rows, last = pending.batch_sums, pending.batch_sums.rows, PENDING_ROWS - 1

        def into_pending(values: Tensor) -> None:
            filled = batches.filled
            torch.sum(sums(values), axis, out=rows[filled])
            batches.filled = filled + 1
            if filled == last:
                pending.flush()

        return into_pending
    part = scratch.take(slot, (target.numel(),), dtype, target.device)
    return lambda values: target.add_(torch.sum(sums(values), axis, out=part))


def _widened(
    sums: Callable[[Tensor], Tensor], output: Tensor, dtype: torch.dtype, scratch: Scratch
) -> Callable[[Tensor], Tensor]:
    """``sums`` cast to ``dtype`` (float64) in the window's ``"wide"`` buffer, laid out as they are.

    A float64 sum of float32 values (``torch.sum(..., dtype=torch.float64)``) casts them first
    into a fresh tensor: an allocation every call, with page faults when it is large. Cast into a
    kept buffer, the same values are summed by the same float64 reduction.
    """
    per_sample = sums(output)
    if per_sample.dtype == dtype:
        return sums
    wide = scratch.laid_out_as("wide", per_sample, dtype)
    if sums is unchanged:  # the values themselves, cast with no Python frame between
        return wide.copy_
    return lambda values: wide.copy_(sums(values))
