"""Rank correlations and bootstrap intervals in numpy (no scipy): how a proxy is judged.

A proxy is judged, as zero-cost proxies are (Abdelfattah et al. 2021), by the rank correlation of
its scores with the final accuracies: Kendall's tau-b and Spearman's rho, both with ties. The
95 % interval resamples architectures (all seeds of an architecture together) with replacement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

#: Numbers one per item: a sequence or a 1-D array.
Values = Sequence[float] | np.ndarray


def _pair(x: Values, y: Values) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(
            f"`x` and `y` must be 1-D and of equal length, got shapes {xs.shape} and {ys.shape}."
        )
    if np.isnan(xs).any() or np.isnan(ys).any():
        raise ValueError("`x` and `y` must not hold NaN (drop those runs first).")
    return xs, ys


def rankdata(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (``-inf``/``inf`` rank lowest/highest).

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    xs = np.asarray(values, dtype=np.float64)
    order = np.argsort(xs, kind="mergesort")
    ranks = np.empty(len(xs), dtype=np.float64)
    sorted_x = xs[order]
    start = 0
    while start < len(xs):
        stop = start
        while stop + 1 < len(xs) and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def _pair_signs(xs: np.ndarray, ys: np.ndarray, same: np.ndarray | None = None) -> tuple[float, float, float]:
    """(concordant - discordant, pairs untied in x, pairs untied in y) over pairs i < j (within ``same``)."""
    xs, ys = rankdata(xs), rankdata(ys)  # ranks: -inf (a singular NASWOT kernel) ties with -inf
    dx = np.sign(xs[:, None] - xs[None, :])
    dy = np.sign(ys[:, None] - ys[None, :])
    upper = np.triu(np.ones((len(xs), len(xs)), dtype=bool), k=1)
    if same is not None:
        upper &= same[:, None] == same[None, :]
    return float((dx * dy)[upper].sum()), float((dx != 0)[upper].sum()), float((dy != 0)[upper].sum())


def kendall_tau(x: Sequence[float], y: Sequence[float], groups: Sequence[object] | None = None) -> float:
    """Kendall's tau-b: ``(C - D) / sqrt((n0 - n1)(n0 - n2))``, NaN when either side is constant.

    With ``groups``, only pairs inside the same group count (a stratified tau: for example,
    architectures of similar size).

    Example:
        >>> round(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 4)
        0.6667
    """
    xs, ys = _pair(x, y)
    same = None if groups is None else np.asarray([str(g) for g in groups])
    if same is not None and len(same) != len(xs):
        raise ValueError(f"`groups` must have one entry per value, got {len(same)} for {len(xs)} values.")
    s, untied_x, untied_y = _pair_signs(xs, ys, same)
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return s / math.sqrt(untied_x * untied_y)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the (average, for ties) ranks; NaN when constant.

    Example:
        >>> round(spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]), 4)
        0.8
    """
    xs, ys = _pair(x, y)
    rx, ry = rankdata(xs) - (len(xs) + 1) / 2, rankdata(ys) - (len(ys) + 1) / 2
    denominator = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum()) / denominator if denominator else math.nan


def grouped_spearman(x: Values, y: Values, groups: Sequence[object] | np.ndarray) -> float:
    """Spearman's rho inside each group, averaged with weights ``len(group) - 1``; NaN if none has 3+."""
    xs, ys = _pair(x, y)
    labels = np.asarray([str(g) for g in groups])
    total, weight = 0.0, 0.0
    for label in np.unique(labels):
        inside = labels == label
        if inside.sum() < 3:
            continue
        rho = spearman_rho(xs[inside], ys[inside])
        if not math.isnan(rho):
            total += (inside.sum() - 1) * rho
            weight += inside.sum() - 1
    return total / weight if weight else math.nan


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    clusters: Sequence[object],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over cluster resamples.

    Args:
        statistic: maps an array of row indices (a resample, rows repeated) to a number.
        clusters: one label per row; a resample draws clusters with replacement and keeps all of a
            drawn cluster's rows (the seeds of one architecture are not independent).
        resamples: number of bootstrap resamples.
        level: coverage of the interval.
        seed: seeds the resampling.

    Returns:
        ``(low, high)``; NaN when fewer than half the resamples gave a number.
    """
    if resamples < 10:
        raise ValueError(f"`resamples` must be >= 10, got {resamples!r}.")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    labels = [str(c) for c in clusters]
    members: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    keys = list(members)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(keys), size=len(keys))
        rows = np.concatenate([members[keys[k]] for k in drawn])
        value = statistic(rows)
        if not math.isnan(value):
            values.append(value)
    if len(values) < resamples / 2:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def size_bins(num_parameters: Sequence[int], decades: float = 0.25) -> list[int]:
    """Bin index of each model on a log10 #params grid of ``decades`` width (0.25: a factor 1.78)."""
    if not decades > 0:
        raise ValueError(f"`decades` must be > 0, got {decades!r}.")
    return [math.floor(math.log10(max(int(p), 1)) / decades) for p in num_parameters]
