"""A window's per-layer sums, packed and combined across processes in one or two collectives. No Lightning."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from emergence_lightning.measure.statistics import TOTAL_IS_PROBE, accumulation_dtype

# A reduction across processes: (tensor, "sum" | "max") -> reduced tensor.
Reduce = Callable[[Tensor, str], Tensor]


def reduce_statistics(
    stats: Sequence, names: Sequence[str], statistic: str, reduce: Reduce | None
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Rows, totals and non-finite probes of every unit, on the CPU, with each unit's node count.

    ``stats`` are the units' statistics (an MoE layer is one unit per expert); ``reduce`` combines a
    tensor across processes (``None`` on one process). Every process must call it with the same layers.
    """
    device = next((s.total.device for s in stats if s.total is not None), torch.device("cpu"))
    dtype = accumulation_dtype(device)
    # Node counts must agree everywhere to pack tensors; a process that saw nothing reports 0.
    sizes = torch.tensor([s.nodes or 0 for s in stats], device=device, dtype=torch.long)
    if reduce is not None:
        # Layers are found as they run; every process must have found the same ones.
        counts = reduce(torch.tensor([len(names)], device=device), "max")
        if int(counts) != len(names):
            raise RuntimeError(
                f"This process found {len(names)} layers ({names}) but another found {int(counts)}; the "
                "processes ran different forward passes. Pass the same `layers=[...]` everywhere."
            )
        if names:
            sizes = reduce(sizes, "max")
    sizes_list = [int(v) for v in sizes.tolist()]

    def packed(values: list[Tensor | None], fill: float) -> Tensor:
        filled = [
            torch.full((size,), fill, device=device, dtype=dtype) if v is None else v.to(dtype)
            for v, size in zip(values, sizes_list)
        ]
        return torch.cat(filled) if filled else torch.zeros(0, device=device, dtype=dtype)

    rows = torch.tensor([float(s.rows) for s in stats], device=device, dtype=dtype)
    totals = packed([s.total for s in stats], -math.inf if statistic == "max" else 0.0)
    # One collective for everything that adds up, one more for a max statistic.
    if statistic in TOTAL_IS_PROBE:
        summed_parts = [rows, totals]
    else:
        probes = packed([s.probe for s in stats], 0.0)
        summed_parts = [rows, probes] if statistic == "max" else [rows, probes, totals]
    summed = torch.cat(summed_parts)
    if reduce is not None:
        summed = reduce(summed, "sum")
        if statistic == "max":
            totals = reduce(totals, "max")
    split = torch.split(summed.cpu(), [part.numel() for part in summed_parts])
    rows = split[0]
    totals = (totals if statistic == "max" else split[-1]).cpu()
    probes = totals if statistic in TOTAL_IS_PROBE else split[1]

    return rows, totals, probes, sizes_list
