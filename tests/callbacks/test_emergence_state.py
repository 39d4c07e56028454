"""What a measurement keeps between batches (issue 19, item 5): a running sum (and a probe) per node,
on the model's device, and nothing activation-sized past its window (a small scratch is kept for the next).

The node counts expected are the architecture's widths. The `meta` device stands for an accelerator
here: a tracker that moved its totals to the host (or made them there) would hold CPU tensors.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import Classifier, loaders, mlp, quiet_trainer

from emergence_lightning import EmergenceCallback
from emergence_lightning.measure import ActivityTracker, sums
from emergence_lightning.measure.statistics import STATISTICS

HIDDEN = (16, 12, 10)  # the tracked ReLUs' widths: one total per node of each


def running_state(tracker: ActivityTracker) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each tracked layer's running (total, probe), in forward order."""
    stats = tracker._stats  # the state under test: nothing public exposes it
    return [(stats[name].total, stats[name].probe) for name in tracker.layer_names]


@pytest.mark.parametrize("statistic", STATISTICS)
def test_the_running_state_is_one_value_per_node_on_the_models_device(statistic):
    net = mlp(hidden=HIDDEN).to("meta")
    tracker = ActivityTracker(net, statistic=statistic)
    with tracker, torch.no_grad():
        for batch in (4, 32):  # a larger batch later must not grow the state
            net(torch.randn(batch, 8, device="meta"))
    state = running_state(tracker)
    assert [tuple(total.shape) for total, _ in state] == [(width,) for width in HIDDEN]
    assert [tuple(probe.shape) for _, probe in state] == [(width,) for width in HIDDEN]
    assert {tensor.device.type for pair in state for tensor in pair} == {"meta"}
    # The batch-sized scratch outlives its window only while small (steps then need no rebuilding).
    assert tracker._scratch.bytes() <= sums.SCRATCH_KEPT_BYTES


def test_a_large_scratch_is_freed_when_the_window_closes(monkeypatch):
    monkeypatch.setattr(sums, "SCRATCH_KEPT_BYTES", 0)
    net = mlp(hidden=HIDDEN)
    tracker = ActivityTracker(net, statistic="fraction")  # its firing masks need a scratch buffer
    with tracker, torch.no_grad():
        net(torch.randn(4, 8))
        assert tracker._scratch.bytes() > 0
    assert tracker._scratch.buffers == {}


def test_a_fit_keeps_per_node_state_on_the_modules_device_and_frees_the_rest(tmp_path):
    model = Classifier(mlp(hidden=HIDDEN))
    callback = EmergenceCallback()
    train, val = loaders(samples=48, val_samples=32)
    quiet_trainer(tmp_path, [callback], max_epochs=2).fit(model, train, val)
    assert callback.tracker is not None
    state = running_state(callback.tracker)
    assert [tuple(total.shape) for total, _ in state] == [(width,) for width in HIDDEN]
    assert all(t.device == model.device for pair in state for t in pair)
    assert callback.tracker._scratch.bytes() <= sums.SCRATCH_KEPT_BYTES
    assert [record.n for record in callback.history] == [HIDDEN] * 3  # epoch 0 and two epochs
