"""Every unit's per-node activity, active nodes and counts from a window's packed totals, in one pass. No Lightning.

A measurement at 1,000 layers spent most of its time in a per-layer Python loop (a slice, ``isfinite``,
a division, a comparison and two counts per layer). Here each step runs once over all nodes of all
units, with the same float operations per node as :func:`~emergence_lightning.measure.statistics.node_activity`
runs per layer, so the results are the same bit for bit; only the per-layer views remain per layer.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class UnitActivities:
    """Per unit (a layer, or one expert of an experts layer), in the order of the packed totals."""

    activity: tuple[Tensor, ...]  # per-node statistic; NaN where a node saw NaN/inf or the unit saw no row
    active: tuple[Tensor, ...]  # bool per node
    nonfinite: list[int]  # nodes that produced NaN or inf (counted inactive); 0 for a unit with no row
    active_counts: list[int]  # active nodes


def unit_activities(
    statistic: str, cut: float, totals: Tensor, probes: Tensor, rows: Tensor, sizes: Sequence[int]
) -> UnitActivities:
    """Activity, active flags and counts of every unit at once.

    Per node of a unit with ``r`` rows: ``activity = total / r`` (``total`` itself for ``"max"``), NaN
    where its probe is not finite; for ``"normalized_mean_abs"`` divided by the unit's mean over its
    finite nodes (ReDo's score; every finite node 0 when that mean is 0). A node is active when its
    activity exceeds ``cut``. A unit with no row (an expert that got no token) has NaN activity, no
    active node and no non-finite node.

    Args:
        statistic: one of :data:`~emergence_lightning.measure.statistics.STATISTICS`.
        cut: the activity a node must exceed to be active (the threshold, or the firing rate).
        totals: every unit's per-node totals, packed in unit order (CPU).
        probes: the same nodes' non-finite probes (a sum that is NaN/inf where a value was).
        rows: values reduced into each node of a unit, one per unit.
        sizes: nodes per unit.
    """
    if totals.numel() != sum(sizes) or probes.shape != totals.shape or rows.numel() != len(sizes):
        raise ValueError(
            f"`totals` ({totals.numel()} nodes), `probes` ({probes.numel()}) and `rows` ({rows.numel()} "
            f"units) do not match `sizes` ({len(sizes)} units, {sum(sizes)} nodes)."
        )
    unit_of_node = _unit_of_node(tuple(sizes))
    node_rows = rows.index_select(0, unit_of_node)  # (6x faster than rows[unit_of_node] on CPU)
    has_rows = node_rows > 0
    finite = torch.isfinite(probes)
    measured = finite & has_rows
    # The usual window (every node finite, every unit with rows) needs no NaN put in and no count of
    # bad nodes: two of the slowest operations here, skipped (CPU tensors: no device sync).
    everything = bool(measured.all())
    per_unit = torch.zeros(2, len(sizes), dtype=torch.long)  # non-finite nodes, active nodes
    if not everything:
        per_unit[0].index_add_(0, unit_of_node, (~finite & has_rows).long())
    activity = totals if statistic == "max" else totals / node_rows
    if not everything:
        activity = torch.where(measured, activity, torch.full_like(activity, math.nan))
    if statistic == "normalized_mean_abs":
        means = _unit_means(activity, finite, rows.tolist(), sizes, per_unit[0].tolist())
        node_means = means.index_select(0, unit_of_node)
        # ReDo: s_i = mean|a_i| / (1/H sum_k mean|a_k|) over the unit's finite nodes. A unit whose
        # outputs are all 0 has every node dormant (score 0), not 0/0.
        activity = torch.where(
            node_means > 0, activity / node_means, torch.where(finite, 0.0 * activity, activity)
        )
    active = activity > cut if everything else (activity > cut) & has_rows
    per_unit[1].index_add_(0, unit_of_node, active.long())
    nonfinite_counts, active_counts = per_unit.tolist()
    return UnitActivities(
        activity.split(list(sizes)), active.split(list(sizes)), nonfinite_counts, active_counts
    )


@functools.lru_cache(maxsize=4)
def _unit_of_node(sizes: tuple[int, ...]) -> Tensor:
    """Each node's unit index (read only). The same layers every window: made once (repeat_interleave
    takes a millisecond for 150,000 nodes on CPU, the rest of a window's measurement about as much).
    """
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))


# A mean of fewer values than torch's parallel grain (32,768) is one serial pass, the same for a row of
# a 2-D tensor as for the row alone (a longer one may be split across threads differently).
ROW_MEAN_LIMIT = 16_384


def _unit_means(
    activity: Tensor, finite: Tensor, rows: list[float], sizes: Sequence[int], nonfinite: list[int]
) -> Tensor:
    """Each unit's mean activity over its finite nodes (0 for a unit with none or with no row).

    Each mean is what ``activity[finite].mean()`` of the unit alone gives, bit for bit (a segmented sum
    would add in another order and round differently): the units with every node finite are stacked
    by size and averaged row by row; the others, and very wide units, one at a time.
    """
    means = torch.zeros(len(sizes), dtype=activity.dtype)
    starts = [0, *itertools.accumulate(sizes)][:-1]
    by_size: dict[int, list[int]] = {}
    one_by_one: list[int] = []
    for unit, (size, row, bad) in enumerate(zip(sizes, rows, nonfinite)):
        if row > 0 and bad < size:
            (by_size.setdefault(size, []) if bad == 0 and size <= ROW_MEAN_LIMIT else one_by_one).append(unit)
    for size, units in by_size.items():
        first = torch.tensor([starts[unit] for unit in units])
        means[units] = activity[first[:, None] + torch.arange(size)].mean(1)
    for unit in one_by_one:
        part = slice(starts[unit], starts[unit] + sizes[unit])
        means[unit] = activity[part][finite[part]].mean()
    return means
