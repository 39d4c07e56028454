"""Helpers for the model zoo: run a model at defaults and compare its layers with widths written
from the architecture (never read back from the tracker).
"""

from __future__ import annotations

import re
import warnings

import torch

from emergence_lightning.measure import ActivityTracker, Measurement, measure_activity
from emergence_lightning.measure.batches import model_call
from emergence_lightning.measure.observer import eval_pass


def measure_quietly(model: torch.nn.Module, batch: object) -> Measurement:
    """``measure_activity(model, [batch])`` at defaults; any warning fails the test (the zoo must be clean).

    And later windows of one tracker measure exactly what the first does: the first learns what each
    module's code does, later ones hook only the modules that matter (no producers, no containers).
    """
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = measure_activity(model, [batch])
        windows = later_windows(model, batch)
    assert result is not None
    for later in windows:
        assert_same_measurement(later, result)
    return result


def later_windows(
    model: torch.nn.Module, batch: object, windows: int = 3, passes: int = 2
) -> list[Measurement]:
    """``windows`` windows of one tracker, each of ``passes`` passes of ``batch`` (as measure_activity runs one)."""
    tracker, found = ActivityTracker(model), []
    for _ in range(windows):
        tracker.reset()
        with eval_pass(model, [[batch]]), tracker:
            for _ in range(passes):
                args, kwargs = model_call(batch, 0)
                tracker.start_pass()
                model(*args, **kwargs)
        measured = tracker.compute()
        assert measured is not None
        found.append(measured)
    return found


def assert_same_measurement(got: Measurement, once: Measurement) -> None:
    """The same layers, nodes and per-node activity (``got`` may count the batch several times)."""
    assert list(zip(got.names, got.n, got.a)) == list(zip(once.names, once.n, once.a))
    for alone, together in zip(once.layers, got.layers):
        torch.testing.assert_close(together.activity, alone.activity, rtol=1e-5, atol=1e-6, equal_nan=True)
        assert together.idle_experts == alone.idle_experts


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


def measure_expecting(model: torch.nn.Module, batches: list, message: str) -> Measurement:
    """``measure_activity(model, batches)`` at defaults; exactly one warning, and it matches ``message`` (a regex)."""
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = measure_activity(model, batches)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 1 and re.search(message, messages[0]), messages
    assert result is not None
    return result


def assert_later_passes_agree(model: torch.nn.Module, batch: object, passes: int = 3) -> Measurement:
    """The same batch ``passes`` times in one window measures what one pass measures, with no warning.

    A window's first pass runs fully intercepted and learns which modules' code needs the mode;
    later passes intercept only that code. The same layers, nodes and per-node activity on every
    pass is what a later pass that lost a routing or producer call would fail.
    """
    once = measure_quietly(model, batch)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repeated = measure_activity(model, [batch] * passes)
    assert repeated is not None
    assert repeated.samples == passes * once.samples
    assert_same_measurement(repeated, once)
    return repeated
