"""NodeStatistic against a float64 reference computed independently (move the node dim last,
flatten everything else, reduce in float64), over the layouts and map sizes whose reduction paths
differ: 2-D outputs, short maps (1x1, 2x2, 4x4 take the matrix-vector path on CPU), long maps,
sequences batch- and time-major, channels-last, a node dim before the batch dim; batches of
changing size (the scratch buffers are reused across shapes); NaN and -inf in the data. The
rule built on mean |a| equals the paper's mean bit for bit wherever no output is negative.
"""

from __future__ import annotations

import math

import pytest
import torch

from emergence_lightning.measure import sums as sums_module
from emergence_lightning.measure.statistics import STATISTICS, NodeStatistic, Scratch, node_activity

THETA = 0.05

# (shape of one batch with N as the batch size, batch_dim, node_dim)
LAYOUTS = [
    pytest.param(lambda n: (n, 7), 0, 1, id="linear (N, F)"),
    pytest.param(lambda n: (n, 6, 1, 1), 0, 1, id="conv 1x1 map"),
    pytest.param(lambda n: (n, 6, 2, 2), 0, 1, id="conv 2x2 map"),
    pytest.param(lambda n: (n, 6, 4, 4), 0, 1, id="conv 4x4 map"),
    pytest.param(lambda n: (n, 6, 9, 7), 0, 1, id="conv 9x7 map"),
    pytest.param(lambda n: (n, 11, 5), 0, 2, id="tokens (N, T, F)"),
    pytest.param(lambda n: (11, n, 5), 1, 2, id="time-major (T, N, F)"),
    pytest.param(lambda n: (n, 3, 4, 8), 0, 3, id="channels-last (N, H, W, C)"),
    pytest.param(lambda n: (5, n, 3), 1, 0, id="nodes before batch (F, N, T)"),
]


def _reference(batches: list[torch.Tensor], batch_dim: int, node_dim: int) -> dict[str, torch.Tensor]:
    """Per node, in float64: sum, sum of |a|, count above THETA, max, and the number of values seen."""
    rows = [
        b.double().movedim((batch_dim, node_dim), (0, -1)).reshape(-1, b.shape[node_dim]) for b in batches
    ]
    values = torch.cat(rows)
    return {
        "sum": values.sum(0),
        "abs_sum": values.abs().sum(0),
        "count": (values > THETA).sum(0).double(),
        "max": values.max(0).values,
        "rows": len(values),
    }


def _batches(shape, sizes, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(shape(n), generator=generator).to(dtype) for n in sizes]
    return batches


@pytest.mark.parametrize("shape, batch_dim, node_dim", LAYOUTS)
@pytest.mark.parametrize("statistic", STATISTICS)
def test_statistic_equals_float64_reference(shape, batch_dim, node_dim, statistic):
    batches = _batches(shape, sizes=(8, 3, 8, 1), dtype=torch.float32)
    stat, scratch = NodeStatistic(statistic, THETA), Scratch()
    for batch in batches:
        stat.add(batch, batch_dim, node_dim, scratch)
    ref = _reference(batches, batch_dim, node_dim)
    assert stat.rows == ref["rows"]
    assert stat.total.dtype == torch.float64
    expected = {
        "mean": ref["sum"],
        "mean_abs": ref["abs_sum"],
        "normalized_mean_abs": ref["abs_sum"],  # the same running total; normalised per layer at the end
        "fraction": ref["count"],
        "max": ref["max"],
    }[statistic]
    # float32 per sample, float64 across samples: the documented bound is far below 1e-5 here.
    torch.testing.assert_close(stat.total, expected, rtol=1e-6, atol=1e-5)
    # The non-finite probe: the running sum of a or |a| (then the total itself), else the plain sum.
    if statistic in ("mean", "mean_abs", "normalized_mean_abs"):
        assert stat.probe is stat.total
    else:
        torch.testing.assert_close(stat.probe, ref["sum"], rtol=1e-6, atol=1e-5)
    if statistic == "fraction":
        assert torch.equal(stat.total, ref["count"])  # counts are exact


@pytest.mark.parametrize("shape, batch_dim, node_dim", LAYOUTS)
@pytest.mark.parametrize("statistic", STATISTICS)
def test_nan_and_minus_inf_reach_the_probe_and_never_fire(shape, batch_dim, node_dim, statistic):
    batches = _batches(shape, sizes=(4, 4), dtype=torch.float32, seed=1)
    first = batches[0].movedim((batch_dim, node_dim), (0, -1))  # a view: writes reach the batch
    first[0, ..., 0] = math.nan  # node 0: NaN at every position of sample 0
    first[1, ..., 1] = -math.inf  # node 1: -inf at every position of sample 1
    stat, scratch = NodeStatistic(statistic, THETA), Scratch()
    for batch in batches:
        stat.add(batch, batch_dim, node_dim, scratch)
    ref = _reference(batches, batch_dim, node_dim)
    # Exactly the two nodes that saw NaN or -inf are non-finite in the probe.
    assert torch.isfinite(stat.probe).tolist() == [False, False] + [True] * (len(stat.probe) - 2)
    assert math.isnan(stat.probe[0])
    if statistic == "fraction":
        assert torch.equal(stat.total, ref["count"])  # NaN > theta is False: never counted
    if statistic in ("mean_abs", "normalized_mean_abs"):
        assert math.isnan(stat.total[0]) and not math.isfinite(stat.total[1])
        torch.testing.assert_close(stat.total[2:], ref["abs_sum"][2:], rtol=1e-6, atol=1e-5)
    if statistic == "max":
        assert math.isnan(stat.total[0])  # the tracker reports a NaN node as inactive, from the probe
        torch.testing.assert_close(stat.total[1:], ref["max"][1:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("statistic", ["mean", "mean_abs"])
@pytest.mark.parametrize("shape", [lambda n: (n, 6, 3, 3), lambda n: (n, 6)], ids=["conv", "linear"])
def test_other_dtypes_accumulate_in_float64(dtype, statistic, shape):
    batches = _batches(shape, sizes=(8, 5), dtype=dtype, seed=2)
    stat, scratch = NodeStatistic(statistic, THETA), Scratch()
    for batch in batches:
        stat.add(batch, 0, 1, scratch)
    ref = _reference(batches, 0, 1)  # the same low-precision values, summed in float64
    assert stat.total.dtype == torch.float64
    expected = ref["sum"] if statistic == "mean" else ref["abs_sum"]
    torch.testing.assert_close(stat.total, expected, rtol=1e-6, atol=1e-5)


def test_changing_node_count_is_refused():
    stat, scratch = NodeStatistic("mean", THETA), Scratch()
    stat.add(torch.ones(2, 4), 0, 1, scratch)
    with pytest.raises(ValueError, match="node count changed from 4 to 5"):
        stat.add(torch.ones(2, 5), 0, 1, scratch)


def _reversed_memory(batch: torch.Tensor) -> torch.Tensor:
    """The same values and shape with the memory order of the first and last dims swapped (not contiguous)."""
    return batch.transpose(0, -1).contiguous().transpose(0, -1)


@pytest.mark.parametrize("shape, batch_dim, node_dim", LAYOUTS)
@pytest.mark.parametrize(
    "activation", [torch.relu, torch.sigmoid, lambda x: torch.nn.functional.relu6(x * 3)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("memory", ["contiguous", "reversed"])
@pytest.mark.parametrize("chunk_elements", [1 << 19, 7], ids=["one chunk", "chunks of 1-2 samples"])
def test_mean_abs_equals_the_papers_mean_bit_for_bit_on_non_negative_outputs(
    shape, batch_dim, node_dim, activation, dtype, memory, chunk_elements, monkeypatch
):
    # Values near THETA, where a last-bit difference would flip a node: the totals must be identical,
    # whatever the memory layout of the output and however the CPU path splits it into chunks.
    monkeypatch.setattr(sums_module, "CPU_MASK_ELEMENTS", chunk_elements)
    batches = [
        activation(b * 0.1 + THETA).to(dtype)
        for b in _batches(shape, sizes=(8, 3, 8, 1), dtype=torch.float32, seed=3)
    ]
    if memory == "reversed":
        batches = [_reversed_memory(b) for b in batches]
        assert not batches[0].is_contiguous()
    paper, absolute, scratch = NodeStatistic("mean", THETA), NodeStatistic("mean_abs", THETA), Scratch()
    for batch in batches:
        paper.add(batch, batch_dim, node_dim, scratch)
        absolute.add(batch, batch_dim, node_dim, scratch)
    assert torch.equal(absolute.total, paper.total)
    # And the chunks change nothing but the order of work: the sums stay within float32 rounding.
    ref = _reference(batches, batch_dim, node_dim)
    torch.testing.assert_close(absolute.total, ref["sum"], rtol=1e-6, atol=1e-5)


def _normalized_reference(batches, batch_dim, node_dim):
    """ReDo's score in float64: per-node mean |a| over the mean of those over the layer's nodes."""
    ref = _reference(batches, batch_dim, node_dim)
    per_node = ref["abs_sum"] / ref["rows"]
    return per_node / per_node.mean()


@pytest.mark.parametrize("shape, batch_dim, node_dim", LAYOUTS)
def test_normalized_mean_abs_is_redos_score(shape, batch_dim, node_dim):
    batches = [b * 0.3 - 0.1 for b in _batches(shape, sizes=(8, 3), dtype=torch.float32, seed=4)]
    stat, scratch = NodeStatistic("normalized_mean_abs", THETA), Scratch()
    for batch in batches:
        stat.add(batch, batch_dim, node_dim, scratch)
    finite = torch.isfinite(stat.probe)
    activity = node_activity("normalized_mean_abs", stat.total, stat.rows, finite)
    torch.testing.assert_close(
        activity, _normalized_reference(batches, batch_dim, node_dim), rtol=1e-6, atol=1e-7
    )


def test_normalized_mean_abs_leaves_non_finite_nodes_out_of_the_layer_mean():
    total = torch.tensor([math.nan, 2.0, 6.0, 0.0], dtype=torch.float64)
    finite = torch.tensor([False, True, True, True])
    activity = node_activity("normalized_mean_abs", total, 2.0, finite)
    # finite per-node means 1, 3, 0: layer mean 4/3
    assert math.isnan(activity[0])
    torch.testing.assert_close(activity[1:], torch.tensor([0.75, 2.25, 0.0], dtype=torch.float64))


def test_normalized_mean_abs_of_an_all_zero_layer_is_all_dormant():
    activity = node_activity(
        "normalized_mean_abs", torch.zeros(3, dtype=torch.float64), 5.0, torch.ones(3, dtype=torch.bool)
    )
    assert torch.equal(activity, torch.zeros(3, dtype=torch.float64))


def test_a_copy_adds_into_its_own_totals_and_pickles():
    import copy
    import pickle

    stat, scratch = NodeStatistic("mean_abs", THETA), Scratch()
    stat.add(torch.ones(2, 3), 0, 1, scratch)
    twin = copy.deepcopy(stat)
    twin.add(torch.ones(2, 3), 0, 1, scratch)
    assert stat.total.tolist() == [2.0, 2.0, 2.0] and twin.total.tolist() == [4.0, 4.0, 4.0]
    restored = pickle.loads(pickle.dumps(twin))
    restored.add(-torch.ones(1, 3), 0, 1, scratch)
    assert restored.total.tolist() == [5.0, 5.0, 5.0] and twin.total.tolist() == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("statistic", STATISTICS)
def test_many_batches_through_the_pending_rows_equal_the_float64_reference(statistic):
    # 21 batches: two full folds of PENDING_ROWS batch sums into the total, and five left pending
    # until the total is read; batches of one sample and of several, with and without positions,
    # and runs of one-sample batches only (their sums over positions go straight into pending rows).
    assert sums_module.PENDING_ROWS == 8
    cases = [
        (shape, sizes) for shape in (lambda n: (n, 5), lambda n: (n, 4, 3, 3)) for sizes in ("mixed", "ones")
    ]
    for shape, kind in cases:
        sizes = [1 + (i % 3) for i in range(21)] if kind == "mixed" else [1] * 21
        batches = _batches(shape, sizes=sizes, dtype=torch.float32, seed=4)
        stat, scratch = NodeStatistic(statistic, THETA), Scratch()
        for batch in batches:
            stat.add(batch, 0, 1, scratch)
        ref = _reference(batches, 0, 1)
        expected = {"mean": "sum", "fraction": "count", "max": "max"}.get(statistic, "abs_sum")
        torch.testing.assert_close(stat.total, ref[expected], rtol=1e-6, atol=1e-5)
        assert stat.rows == ref["rows"]
        stat.reset()  # a new window: nothing pending carries over
        stat.add(batches[0], 0, 1, scratch)
        torch.testing.assert_close(stat.total, _reference(batches[:1], 0, 1)[expected], rtol=1e-6, atol=1e-5)
        for batch in batches[:5]:  # left pending, then a new window before the total was read
            stat.add(batch, 0, 1, scratch)
        stat.reset()
        stat.add(batches[1], 0, 1, scratch)
        torch.testing.assert_close(stat.total, _reference(batches[1:2], 0, 1)[expected], rtol=1e-6, atol=1e-5)
