"""Rank correlations and bootstrap intervals against values computed by hand."""

import math

import numpy as np
import pytest

from emergence_lightning.predictor.stats import (
    bootstrap_ci,
    grouped_spearman,
    kendall_tau,
    rankdata,
    size_bins,
    spearman_rho,
)


def test_kendall_and_spearman_of_one_swap():
    # Pairs of (1, 2, 3, 4) vs (1, 3, 2, 4): 5 concordant, 1 discordant -> tau = 4/6.
    # d = (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman_rho([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_ties_follow_tau_b_and_average_ranks():
    # x = (1, 2, 2, 3), y = (1, 2, 3, 4): 5 concordant, 1 pair tied in x: tau_b = 5 / sqrt(5 * 6).
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    # ranks (1, 2.5, 2.5, 4) centred (-1.5, 0, 0, 1.5); y centred (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5).
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_minus_infinity_ties_with_itself():
    # Two singular NASWOT kernels (-inf) tie: same as x = (1, 1, 2, 3).
    assert kendall_tau([-math.inf, -math.inf, 1, 2], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert spearman_rho([-math.inf, -math.inf, 1, 2], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_constant_input_gives_nan_and_nan_input_is_refused():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="must not hold NaN"):
        kendall_tau([1, math.nan, 3], [1, 2, 3])
    with pytest.raises(ValueError, match=r"equal length, got shapes \(3,\) and \(2,\)"):
        spearman_rho([1, 2, 3], [1, 2])


def test_grouped_correlations_count_only_pairs_inside_a_group():
    x, y, groups = [1, 2, 3, 4], [2, 1, 4, 3], [0, 0, 1, 1]
    # All pairs: 4 concordant, 2 discordant (the two within-group pairs) -> 1/3; within groups: -1.
    assert kendall_tau(x, y) == pytest.approx(1 / 3)
    assert kendall_tau(x, y, groups=groups) == pytest.approx(-1.0)
    # Groups of 3: (1,2,3) vs (1,3,2) rho 0.5; (4,5,6) vs (6,5,4) rho -1; weights 2 and 2.
    assert grouped_spearman([1, 2, 3, 4, 5, 6], [1, 3, 2, 6, 5, 4], ["a"] * 3 + ["b"] * 3) == pytest.approx(
        -0.25
    )


def test_bootstrap_draws_whole_clusters_and_brackets_the_statistic():
    clusters = ["a", "a", "b", "b", "c", "c"]

    def rows_come_in_pairs(rows: np.ndarray) -> float:
        counts = np.bincount(rows, minlength=6)
        assert (counts[0::2] == counts[1::2]).all()  # both runs of a cluster, every time
        return float(len(rows))

    assert bootstrap_ci(rows_come_in_pairs, clusters, resamples=50) == (6.0, 6.0)
    x = np.arange(20.0)
    y = x + np.random.default_rng(0).normal(0, 3, 20)
    low, high = bootstrap_ci(lambda r: kendall_tau(x[r], y[r]), list(range(20)), resamples=300)
    assert low < kendall_tau(x, y) < high <= 1
    with pytest.raises(ValueError, match="`resamples` must be >= 10, got 5"):
        bootstrap_ci(len, clusters, resamples=5)


def test_size_bins_on_a_log_grid():
    # 10**0.25 = 1.78: 1000 and 1500 share a bin, 2000 is in the next.
    assert size_bins([1000, 1500, 2000, 10**6]) == [12, 12, 13, 24]
    with pytest.raises(ValueError, match="`decades` must be > 0, got 0"):
        size_bins([10], decades=0)
