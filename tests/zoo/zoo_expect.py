"""Helpers for the model zoo: run a model at defaults and compare its layers with widths written
from the architecture (never read back from the tracker).
"""

from __future__ import annotations

import warnings

import torch

from emergence_lightning.measure import Measurement, measure_activity


def measure_quietly(model: torch.nn.Module, batch: object) -> Measurement:
    """``measure_activity(model, [batch])`` at defaults; any warning fails the test (the zoo must be clean)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = measure_activity(model, [batch])
    assert result is not None
    return result


def assert_layers(result: Measurement, expected: list[tuple[str, int]]) -> None:
    """Every tracked layer, in forward order, with its node count, equals ``expected``."""
    got = list(zip(result.names, result.n))
    if got != expected:
        wrong = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e][:5]
        raise AssertionError(
            f"{len(got)} layers tracked, {len(expected)} expected; first differences (index, got, expected): "
            f"{wrong}; extra got: {got[len(expected) :][:5]}; missing: {expected[len(got) :][:5]}"
        )
    assert all(0 <= a <= n for a, n in zip(result.a, result.n))
