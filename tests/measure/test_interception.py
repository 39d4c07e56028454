"""What the window intercepts: everything on a module's first call in a window, later only the code
of modules that call activation functions, with the same measurement either way.
"""

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from emergence_lightning.measure import ActivityTracker, interception, measure_activity


class Net(nn.Module):
    """A functional ReLU inside a library block, an activation module, a plain Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, batch_first=True, dropout=0.0)
        self.fc = nn.Linear(8, 6)
        self.act = nn.GELU()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(self.encoder(x))))


class TrainingOnlyActivation(nn.Module):
    """A leaf that applies its activation only in training mode (eval: identity)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x) if self.training else x


def counting(monkeypatch) -> list[int]:
    """Counts the torch calls the window's mode sees, per forward pass."""
    seen = [0]
    original = interception.ActivationCalls.__torch_function__

    def counted(self, func, types, args=(), kwargs=None):
        seen[-1] += 1
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(interception.ActivationCalls, "__torch_function__", counted)
    return seen


def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(4, 5, 8, generator=generator) for _ in range(3)]


def test_later_passes_intercept_only_code_that_calls_activations(monkeypatch):
    torch.manual_seed(0)
    model = Net().eval()
    seen = counting(monkeypatch)
    tracker = ActivityTracker(model)
    with torch.no_grad(), tracker:
        for x in batches():
            tracker.start_pass()
            model(x)
            seen.append(0)
    first, second, third = seen[:3]
    # First pass: every call of every module's code; then the encoder layer's own forward only
    # (its F.relu, the residual adds, the norms' calls are in it), not the Linears or the GELU.
    assert first > second == third > 0
    measured = tracker.compute()
    assert measured is not None and measured.names == ["encoder.relu-fn", "act"] and measured.samples == 60


def test_one_window_of_three_passes_equals_the_same_passes_fully_intercepted():
    torch.manual_seed(0)
    model = Net().eval()
    together = ActivityTracker(model)
    with torch.no_grad(), together:
        for x in batches():
            together.start_pass()
            model(x)
    # Independent of the learning: each pass in a window of its own runs fully intercepted.
    apart = ActivityTracker(model)
    sums = None
    for x in batches():
        apart.reset()
        with torch.no_grad(), apart:
            apart.start_pass()
            model(x)
        part = apart.compute()
        assert part is not None
        sums = (
            [layer.activity for layer in part.layers]
            if sums is None
            else [s + layer.activity for s, layer in zip(sums, part.layers)]
        )
    whole = together.compute()
    assert whole is not None and sums is not None
    for layer, summed in zip(whole.layers, sums):
        # float32 rounding only: with the mode off in its code, MultiheadAttention takes its fused
        # path on later passes (the plain path under the mode), as it does outside any window.
        torch.testing.assert_close(layer.activity, summed / 3, rtol=1e-6, atol=1e-7)


def test_what_was_learned_in_eval_mode_does_not_hide_a_training_mode_activation():
    model = nn.Sequential(nn.Linear(4, 5), TrainingOnlyActivation())
    tracker = ActivityTracker(model)
    x = torch.randn(6, 4)
    with torch.no_grad(), tracker:
        model.eval()
        for _ in range(2):
            tracker.start_pass()
            model(x)
        assert tracker.layer_names == []  # no activation in eval mode
        model.train()
        tracker.start_pass()
        model(x)
    measured = tracker.compute()
    assert measured is not None and measured.names == ["1"] and measured.samples == 6


class LateActivation(nn.Module):
    """Applies its conv's weight functionally in its own code, and an activation module to the result
    only on batches of more than two samples (so the activation is first seen on a later pass).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 9)  # the last module producer: 9 features on the last dim
        self.conv = nn.Conv1d(8, 7, 3)  # its weight applied by F.conv1d below: 7 channels on dim 1
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 9 tokens, 8 features)
        self.lin(x)
        channels = F.conv1d(x.transpose(1, 2), self.conv.weight, self.conv.bias, padding=1)  # (batch, 7, 9)
        return self.act(channels) if x.shape[0] > 2 else channels


def test_code_applying_another_modules_weight_stays_intercepted_after_the_learning_pass():
    # The first pass shows no activation call, only the conv weight applied functionally; the
    # ReLU first runs on the second pass, where that conv (7 channels, dim 1) must be its producer,
    # not the Linear before it (9 features, which the 9 tokens on the last dim would match).
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    small, large = torch.randn(2, 9, 8, generator=generator), torch.randn(3, 9, 8, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured = measure_activity(LateActivation(), [small, large])
    # 3 samples x 9 positions per channel; a layout from the Linear would count 9 nodes over 3 x 7 rows.
    assert measured is not None and measured.names == ["act"] and measured.n == [7] and measured.samples == 27
