"""The one-pass activity of every unit (measure/activity.py) and the tracker's measurement built on it.

Expected values come from float64 arithmetic done by hand (Python floats: the same IEEE division),
from the per-layer rule the tracker used before (``statistics.node_activity``, one layer at a time)
for bit-for-bit identity, and from the models' own outputs read with plain forward passes.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from emergence_lightning.measure import ActivityTracker, measure_activity
from emergence_lightning.measure.activity import ROW_MEAN_LIMIT, unit_activities
from emergence_lightning.measure.measurement import LayerActivity, Measurement
from emergence_lightning.measure.statistics import STATISTICS, TOTAL_IS_PROBE, node_activity

THETA, FIRING = 0.05, 0.5


def cut_of(statistic: str) -> float:
    return FIRING if statistic == "fraction" else THETA


def packed_units(seed: int, units: int, statistic: str, max_size: int = 40):
    """Seeded packed totals, probes, rows and sizes: some units with no row, some non-finite nodes."""
    draw = random.Random(seed)
    sizes = [draw.randint(1, max_size) for _ in range(units)]
    rows = [0.0 if draw.random() < 0.1 else float(draw.randint(1, 64)) for _ in range(units)]
    totals, probes = [], []
    for size, row in zip(sizes, rows):
        for _ in range(size):
            if statistic == "fraction":
                total = float(draw.randint(0, int(row)))  # firing counts
            elif statistic == "max":
                total = draw.uniform(-1.0, 1.0)
            elif statistic == "mean":
                total = draw.uniform(-0.5, 1.0) * row
            else:
                total = draw.choice([0.0, draw.uniform(0.0, 0.2)]) * row
            probe = total if statistic in TOTAL_IS_PROBE else draw.uniform(-1.0, 1.0)
            if draw.random() < 0.03:
                probe = draw.choice([math.inf, -math.inf, math.nan])
                if statistic in TOTAL_IS_PROBE:
                    total = probe
            totals.append(total)
            probes.append(probe)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return as_tensor(totals), as_tensor(probes), as_tensor(rows), sizes


def by_hand(statistic: str, totals, probes, rows, sizes):
    """Per unit: (activity list, active list, non-finite count, active count) in Python floats."""
    result, offset = [], 0
    for size, row in zip(sizes, rows.tolist()):
        total, probe = totals[offset : offset + size].tolist(), probes[offset : offset + size].tolist()
        offset += size
        if row == 0:
            result.append(([math.nan] * size, [False] * size, 0, 0))
            continue
        finite = [math.isfinite(p) for p in probe]
        activity = [
            (t if statistic == "max" else t / row) if ok else math.nan for t, ok in zip(total, finite)
        ]
        if statistic == "normalized_mean_abs":
            kept = [value for value, ok in zip(activity, finite) if ok]
            mean = math.fsum(kept) / len(kept) if kept else 0.0
            activity = [
                value / mean if mean > 0 else (0.0 if ok else value) for value, ok in zip(activity, finite)
            ]
        active = [value > cut_of(statistic) for value in activity]  # NaN > cut is False
        result.append((activity, active, finite.count(False), active.count(True)))
    return result


@pytest.mark.parametrize("statistic", STATISTICS)
def test_unit_activities_match_float64_by_hand(statistic):
    totals, probes, rows, sizes = packed_units(seed=1, units=60, statistic=statistic)
    units = unit_activities(statistic, cut_of(statistic), totals, probes, rows, sizes)
    expected = by_hand(statistic, totals, probes, rows, sizes)
    assert len(units.activity) == len(units.active) == len(expected) == 60
    assert (
        sum(count for *_, count in expected) > 0 and sum(bad for *_, bad, _ in expected) > 0
    )  # both cases occur
    for unit, (activity, active, nonfinite, active_count) in enumerate(expected):
        got = units.activity[unit]
        assert got.dtype == torch.float64 and units.active[unit].dtype == torch.bool
        if statistic == "normalized_mean_abs":  # the mean is torch's sum, in its own order: not bit for bit
            torch.testing.assert_close(
                got, torch.tensor(activity, dtype=torch.float64), rtol=1e-12, atol=0, equal_nan=True
            )
        else:
            assert [v if not math.isnan(v) else "nan" for v in got.tolist()] == [
                v if not math.isnan(v) else "nan" for v in activity
            ]
        assert units.active[unit].tolist() == active
        assert units.nonfinite[unit] == nonfinite
        assert units.active_counts[unit] == active_count


@pytest.mark.parametrize("statistic", STATISTICS)
def test_unit_activities_equal_the_per_layer_rule_bit_for_bit_over_1000_units(statistic):
    # What compute() ran per layer before: node_activity on the unit's slice, then one comparison.
    totals, probes, rows, sizes = packed_units(seed=2, units=1000, statistic=statistic, max_size=300)
    units = unit_activities(statistic, cut_of(statistic), totals, probes, rows, sizes)
    offset = 0
    for unit, (size, row) in enumerate(zip(sizes, rows.tolist())):
        total, probe = totals[offset : offset + size], probes[offset : offset + size]
        offset += size
        if row == 0:
            assert units.activity[unit].isnan().all() and not units.active[unit].any()
            continue
        before = node_activity(statistic, total, row, torch.isfinite(probe))
        assert torch.equal(units.activity[unit].isnan(), before.isnan())
        assert torch.equal(units.activity[unit].nan_to_num(), before.nan_to_num())  # bit for bit, NaN aside
        assert torch.equal(units.active[unit], before > cut_of(statistic))
    assert offset == totals.numel()


def test_redo_scores_of_many_equal_and_very_wide_units_equal_each_unit_alone_bit_for_bit():
    # Finite units of one size are averaged as rows of one tensor, units wider than ROW_MEAN_LIMIT
    # and units with a non-finite node one at a time: every mean must be the unit's own mean().
    generator = torch.Generator().manual_seed(4)
    sizes = [8] * 500 + [257] * 40 + [ROW_MEAN_LIMIT + 1000] * 2 + [1] * 10 + [64] * 5
    totals = torch.rand(sum(sizes), dtype=torch.float64, generator=generator) * 37.0
    totals[-64 * 5 + 3] = math.inf  # one unit of 64 with a non-finite node
    rows = torch.full((len(sizes),), 37.0, dtype=torch.float64)
    units = unit_activities("normalized_mean_abs", THETA, totals, totals, rows, sizes)
    for unit, (total, activity) in enumerate(zip(totals.split(sizes), units.activity)):
        before = node_activity("normalized_mean_abs", total, 37.0, torch.isfinite(total))
        assert torch.equal(activity.nan_to_num(), before.nan_to_num()), unit
    assert units.nonfinite == [0] * (len(sizes) - 5) + [1, 0, 0, 0, 0]


def test_unit_activities_refuse_sizes_that_do_not_match_the_totals():
    totals = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`totals` \(5 nodes\).*`sizes` \(2 units, 6 nodes\)"):
        unit_activities("mean", THETA, totals, totals, torch.ones(2, dtype=torch.float64), [3, 3])


def test_measurement_takes_precomputed_counts_or_counts_itself():
    layer = LayerActivity("relu", torch.tensor([0.0, 1.0, 2.0]), torch.tensor([False, True, True]), 0)
    assert Measurement([layer], samples=4).a == [2]
    assert Measurement([layer], samples=4, active_counts=[2]).a == [2]
    with pytest.raises(ValueError, match=r"`active_counts` has 2 entries for 1 layers"):
        Measurement([layer], samples=4, active_counts=[2, 1])


def test_a_thousand_layers_equal_their_outputs_read_by_hand():
    # 1,000 Linear(4, 4) + ReLU blocks, identity weights and seeded biases: features die and revive.
    torch.manual_seed(0)
    blocks = []
    for _ in range(1000):
        linear = nn.Linear(4, 4)
        with torch.no_grad():
            linear.weight.copy_(torch.eye(4))
            linear.bias.uniform_(-0.3, 0.3)
        blocks += [linear, nn.ReLU()]
    model = nn.Sequential(*blocks)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    result = measure_activity(model, [x], threshold=THETA)

    expected, h = [], x
    with torch.no_grad():
        for linear in blocks[::2]:
            h = torch.relu(linear(h))
            expected.append(h.double().abs().mean(0))
    expected = torch.stack(expected)
    assert result.names == [str(2 * i + 1) for i in range(1000)]
    assert result.n == [4] * 1000
    got = torch.stack([layer.activity for layer in result.layers])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    assert (expected - THETA).abs().min() > 1e-9  # no node at the threshold: the flags below are decided
    assert result.a == (expected > THETA).sum(1).tolist()
    assert 0 < sum(result.a) < 4000 and result.samples == 16
    assert [layer.a for layer in result.layers] == result.a  # the counts equal each mask's own count


def test_non_finite_nodes_are_nan_inactive_and_warned_per_layer():
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Linear(3, 3), nn.ReLU())
    with torch.no_grad():
        model[2].weight.copy_(torch.eye(3))
        model[2].bias.zero_()
        model[2].weight[2, 2] = 0.0  # inf * 0 = NaN reaches every output of the Linear
    x = torch.tensor([[1.0, 2.0, math.inf], [3.0, 0.0, 1.0]])
    with pytest.warns(RuntimeWarning) as caught:
        result = measure_activity(model, [x])
    messages = [str(w.message) for w in caught]
    assert "Layer '1': 1 of 3 nodes produced NaN or inf; they are counted as inactive." in messages
    assert "Layer '3': 3 of 3 nodes produced NaN or inf; they are counted as inactive." in messages
    first, second = result.layers
    assert first.activity[:2].tolist() == [2.0, 1.0] and math.isnan(first.activity[2])
    assert first.active.tolist() == [True, True, False] and first.nonfinite_nodes == 1
    assert second.activity.isnan().all() and second.nonfinite_nodes == 3
    assert result.a == [2, 0] and result.n == [3, 3]


class HardRoutedExperts(nn.Module):
    """ReLU, then each token to one expert of a list (argmax of a fixed router), then ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.router = nn.ReLU(), nn.Linear(4, 3)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(4, 5), nn.ReLU()) for _ in range(3))
        self.last = nn.ReLU()

    def forward(self, x):
        tokens = self.first(x)
        chosen = self.router(tokens).argmax(-1)
        out = torch.zeros(len(tokens), 5)
        for index, expert in enumerate(self.experts):
            rows = chosen == index
            if rows.any():
                out[rows] = expert(tokens[rows])
        return self.last(out - 0.1)


def test_an_idle_expert_is_nan_and_the_others_average_their_own_tokens():
    torch.manual_seed(0)
    model = HardRoutedExperts()
    with torch.no_grad():
        model.router.weight.zero_()
        model.router.weight[0, 0] = model.router.weight[1, 1] = 1.0
        model.router.bias.copy_(torch.tensor([0.0, 0.0, -9.0]))  # expert 2 never wins
    x = torch.rand(12, 4, generator=torch.Generator().manual_seed(3)) + 0.01
    with pytest.warns(RuntimeWarning, match=r"experts \[2\] of 3 got no token"):
        result = measure_activity(model, [x], threshold=THETA)

    with torch.no_grad():  # by hand: each expert's ReLU averaged over the tokens routed to it
        chosen = model.router(x).argmax(-1)
        per_expert = [
            torch.relu(model.experts[e][0](x[chosen == e])).double().mean(0)
            if (chosen == e).any()
            else torch.full((5,), math.nan, dtype=torch.float64)
            for e in range(3)
        ]
        out = torch.zeros(12, 5)
        for e in range(2):
            out[chosen == e] = torch.relu(model.experts[e][0](x[chosen == e]))
        last = torch.relu(out - 0.1).double().mean(0)
    assert (chosen == 0).any() and (chosen == 1).any()
    assert result.names == ["first", "experts.each.1", "last"] and result.n == [4, 15, 5]
    experts = result.layers[1]
    assert experts.experts == 3 and experts.idle_experts == (2,) and experts.nonfinite_nodes == 0
    torch.testing.assert_close(experts.activity, torch.cat(per_expert), rtol=1e-12, atol=0, equal_nan=True)
    by_hand = [int((part > THETA).sum()) for part in per_expert]
    assert experts.expert_active == by_hand and by_hand[2] == 0
    assert result.a == [int((x.double().mean(0) > THETA).sum()), sum(by_hand), int((last > THETA).sum())]


class Skipping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.ReLU(), nn.Tanh(), nn.ReLU()
        self.skip_b = False

    def forward(self, x):
        return self.c(x if self.skip_b else self.b(self.a(x)) - 0.5)


def test_a_layer_missing_from_a_window_is_left_out_and_named():
    model = Skipping()
    x = torch.tensor([[1.0, -1.0, 0.5], [2.0, -2.0, 0.0]])
    tracker = ActivityTracker(model, statistic="mean")
    with tracker, torch.no_grad():
        tracker.start_pass()
        model(x)
        full = tracker.compute()
        tracker.reset()
        model.skip_b = True
        tracker.start_pass()
        model(x)
        with pytest.warns(
            RuntimeWarning
        ) as caught:  # also: 'a' and 'b' ran once in one pass, 0 times in another
            partial = tracker.compute()
    missing = [str(w.message) for w in caught if "earlier measurements" in str(w.message)]
    assert missing == [
        "Layers ['a', 'b'] ran in earlier measurements but not in this one; this measurement leaves them out."
    ]
    # By hand, from the same float32 outputs, averaged in float64 over the 2 samples.
    relu_x = torch.relu(x)
    tanh = torch.tanh(relu_x)
    last = torch.relu(tanh - 0.5)
    means = [values.double().mean(0) for values in (relu_x, tanh, last)]
    assert full.names == ["a", "b", "c"] and partial.names == ["c"]
    assert [layer.activity.tolist() for layer in full.layers] == [mean.tolist() for mean in means]
    assert full.a == [int((mean > THETA).sum()) for mean in means] == [2, 2, 1]
    assert partial.n == [3] and partial.layers[0].activity.tolist() == means[0].tolist()
    assert partial.a == [2]
