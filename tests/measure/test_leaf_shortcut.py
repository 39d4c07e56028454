"""An activation leaf's later outputs go straight to the step that added its first (the tracker's
shortcut, ``LeafShortcut``): it must give exactly what the full bookkeeping gives, and step aside
whenever that bookkeeping would decide otherwise. Expected values are computed here from the
model's own outputs, never from the tracker.
"""

import copy
import pickle

import pytest
import torch
from tiny_models import SharedReLU, mlp
from torch import nn

from emergence_lightning.measure import ActivityTracker


def window(tracker: ActivityTracker, model: nn.Module, batches: list[torch.Tensor], grad: bool = False):
    tracker.reset()
    with tracker, torch.set_grad_enabled(grad):
        for batch in batches:
            tracker.start_pass()
            model(batch)
    return tracker.compute()


def hidden_outputs(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The ReLU outputs of an ``mlp``, computed directly."""
    with torch.no_grad():
        first = model[1](model[0](x))
        return [first, model[3](model[2](first))]


def count_records(tracker: ActivityTracker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sites: list[str] = []
    full = type(tracker)._record

    def counted(self, site, *args, **kwargs):
        sites.append(site)
        return full(self, site, *args, **kwargs)

    monkeypatch.setattr(type(tracker), "_record", counted)
    return sites


def test_later_passes_skip_the_bookkeeping_and_give_the_same_activity(monkeypatch):
    torch.manual_seed(0)
    model = mlp(hidden=(16, 12))
    x = torch.randn(40, 8)
    batches = [x[:16], x[16:32], x[32:]]  # the last batch has another layout (8 rows)
    tracker = ActivityTracker(model)
    window(tracker, model, batches)  # learns the modules
    records = count_records(tracker, monkeypatch)
    for _ in range(3):
        result = window(tracker, model, batches)
        expected = [h.mean(0).double() for h in hidden_outputs(model, x)]
        assert result.samples == 40
        for layer, mean in zip(result.layers, expected):
            assert torch.allclose(layer.activity, mean, atol=1e-6)
    # The full batches' outputs went straight to their steps; only each window's last, smaller batch
    # went through `_record` (it does not replace the full batches' shortcut).
    assert sorted(records) == ["1", "1", "1", "3", "3", "3"]


def test_a_module_called_twice_a_pass_keeps_its_second_layer():
    torch.manual_seed(0)
    model = SharedReLU()
    x = torch.randn(20, 8)
    tracker = ActivityTracker(model)
    for _ in range(3):
        result = window(tracker, model, [x[:10], x[10:]])
        with torch.no_grad():
            first = torch.relu(model.fc1(x))
            second = torch.relu(model.fc2(first))
        assert result.names == ["act", "act-call2"]
        assert torch.allclose(result.layers[0].activity, first.mean(0).double(), atol=1e-6)
        assert torch.allclose(result.layers[1].activity, second.mean(0).double(), atol=1e-6)
        assert result.samples == 20


def test_a_sample_limit_set_later_is_applied():
    torch.manual_seed(0)
    model = mlp(hidden=(16, 12))
    x = torch.randn(30, 8)
    tracker = ActivityTracker(model)
    for _ in range(2):
        window(tracker, model, [x[:10], x[10:20], x[20:]])
    tracker.limit_samples(15)
    result = window(tracker, model, [x[:10], x[10:20], x[20:]])
    assert result.samples == 15
    expected = hidden_outputs(model, x[:15])[0].mean(0).double()
    assert torch.allclose(result.layers[0].activity, expected, atol=1e-6)


class Narrowed(nn.Module):
    """A ReLU after the first ``width`` features: its node count changes with ``width``, the module
    tree does not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(8, 8), nn.ReLU()
        self.width = 8

    def forward(self, x):
        return self.act(self.fc(x)[:, : self.width].contiguous())


def test_a_layer_whose_width_changes_between_windows_is_measured_at_each_width():
    torch.manual_seed(0)
    model = Narrowed()
    x = torch.randn(12, 8)
    tracker = ActivityTracker(model)
    for width in (8, 5, 8, 8):
        model.width = width
        result = window(tracker, model, [x[:6], x[6:]])
        with torch.no_grad():
            expected = torch.relu(model.fc(x)[:, :width]).mean(0).double()
        assert result.n == [width]
        assert result.samples == 12
        assert torch.allclose(result.layers[0].activity, expected, atol=1e-6)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda t: pickle.loads(pickle.dumps(t))])
def test_a_copied_tracker_adds_nothing_to_the_original(duplicate):
    torch.manual_seed(0)
    model = mlp(hidden=(16, 12))
    x = torch.randn(20, 8)
    tracker = ActivityTracker(model)
    for _ in range(2):
        before = window(tracker, model, [x[:10], x[10:]])
    twin = duplicate(tracker)
    copied = window(twin, twin.model, [x[:10], x[10:]])
    expected = hidden_outputs(twin.model, x)[0].mean(0).double()
    assert torch.allclose(copied.layers[0].activity, expected, atol=1e-6)
    assert copied.samples == 20
    # The original's totals hold its own window, untouched by the copy's.
    again = tracker.compute()
    assert again.samples == before.samples == 20
    assert torch.equal(again.layers[0].activity, before.layers[0].activity)


def test_training_passes_are_measured_outside_the_autograd_graph():
    torch.manual_seed(0)
    model = mlp(hidden=(16, 12)).train()
    x = torch.randn(20, 8)
    tracker = ActivityTracker(model)
    for _ in range(3):
        tracker.reset()
        with tracker:
            for batch in (x[:10], x[10:]):
                tracker.start_pass()
                model(batch).sum().backward()
        result = tracker.compute()
        assert result.samples == 20
        expected = hidden_outputs(model, x)[0].mean(0).double()
        assert torch.allclose(result.layers[0].activity, expected, atol=1e-6)
        assert not result.layers[0].activity.requires_grad


def test_a_shortcut_left_from_before_a_width_change_in_another_mode_is_not_used():
    # The width changes in a training window of one pass, where the leaf runs fully hooked (its
    # first call in that mode) and its eval-mode shortcut is not replaced; back in eval mode at the
    # old width, that shortcut matches the output but its step adds into totals no longer used.
    torch.manual_seed(0)
    model = Narrowed().eval()
    x = torch.randn(12, 8)
    tracker = ActivityTracker(model)
    for _ in range(2):
        window(tracker, model, [x[:6], x[6:]])
    model.width = 5
    model.train()
    assert window(tracker, model, [x[:6]]).n == [5]  # (no larger scratch buffer: the same steps' views)
    model.width = 8
    model.eval()
    result = window(tracker, model, [x[:6], x[6:]])
    with torch.no_grad():
        expected = torch.relu(model.fc(x)).mean(0).double()
    assert result.n == [8]
    assert result.samples == 12
    assert torch.allclose(result.layers[0].activity, expected, atol=1e-6)
