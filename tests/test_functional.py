import math
import random

import pytest
from helpers.paths import count_paths, dense_edges, first_active

from emergence_lightning import emergence, log10_emergence, relative_emergence

# DESIGN.md section 1, checked by hand: (n, a, E paper, E induced).
VECTORS = [
    ((3, 2, 2), (1, 1, 2), 12, 8),
    ((4, 3, 2, 1), (2, 1, 2, 1), 34, 18),
    ((3, 2, 2), (0, 0, 2), 16, 4),
    ((2, 3, 4), (0, 3, 4), 30, 30),
    ((5, 4, 3, 2), (1, 2, 3, 2), 170, 98),
]


@pytest.mark.parametrize(("n", "a", "paper", "induced"), VECTORS)
def test_design_vectors(n, a, paper, induced):
    assert emergence(n, a) == paper
    assert emergence(n, a, variant="induced") == induced


@pytest.mark.parametrize("n", [(1,), (3, 2, 2), (7, 1, 9, 4)])
def test_fully_active_network_has_no_emergence(n):
    assert emergence(n, n) == 0
    assert emergence(n, n, variant="induced") == 0


def brute_force(n, a, variant):
    """Every path of the dense layered graph enumerated node by node; nodes < a_i are active."""
    return count_paths(dense_edges(n), first_active(n, a), variant)


@pytest.mark.parametrize("seed", range(25))
def test_matches_brute_force_enumeration(seed):
    rng = random.Random(seed)
    n = [rng.randint(1, 4) for _ in range(rng.randint(1, 5))]
    a = [rng.randint(0, width) for width in n]
    for variant in ("paper", "induced"):
        assert emergence(n, a, variant=variant) == brute_force(n, a, variant)


def test_custom_m_replaces_intermediate_widths():
    # layer 0's 2 dead nodes reach the end through m_1 nodes; layer 1's 5 dead nodes directly
    assert emergence([2, 5, 1], [0, 0, 1], m=[2, 1, 1]) == 2 * 1 * 1 + 5 * 1
    assert emergence([2, 5, 1], [0, 0, 1]) == 2 * 5 * 1 + 5 * 1


def test_induced_equals_paper_when_intermediates_fully_active():
    n, a = (6, 4, 5, 3), (2, 4, 5, 1)
    assert emergence(n, a) == emergence(n, a, variant="induced")


def test_exact_integers_beyond_float_range():
    n = [1024] * 120
    a = [512] * 120
    E = emergence(n, a)
    assert isinstance(E, int) and E > 10**308
    assert math.isinf(relative_emergence(E, 10))
    assert 350 < log10_emergence(E) < 400


def test_relative_and_log10():
    assert relative_emergence(12, 4) == 3.0
    assert log10_emergence(0) == 0.0
    assert log10_emergence(999) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": [3, 2], "a": [1]}, ValueError, r"same length.*len\(n\)=2.*len\(a\)=1"),
        ({"n": [3, 2], "a": [4, 1]}, ValueError, r"a\[0\]=4 > n\[0\]=3"),
        ({"n": [3, -2], "a": [1, 0]}, ValueError, r"`n` must hold non-negative counts, got -2"),
        ({"n": [3, 2], "a": [1, -1]}, ValueError, r"`a` must hold non-negative counts, got -1"),
        ({"n": [3, 2], "a": [1, 0.5]}, TypeError, r"`a` must hold integers, got 0.5"),
        ({"n": [3, 2], "a": [1, 1], "m": [1]}, ValueError, r"`m` must have the same length"),
        ({"n": [3, 2], "a": [1, 1], "variant": "fast"}, ValueError, r"`variant` must be one of .*'fast'"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        emergence(**kwargs)


def test_bad_relative_input():
    with pytest.raises(ValueError, match=r"`num_parameters` must be a positive int, got 0"):
        relative_emergence(5, 0)
    with pytest.raises(ValueError, match=r"`E` must be a non-negative int, got -1"):
        relative_emergence(-1, 3)
