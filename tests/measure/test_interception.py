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


def hooked(model: nn.Module) -> dict[str, tuple[bool, bool]]:
    """Per hooked module: whether it has a forward pre-hook and a forward hook."""
    return {
        name: (bool(module._forward_pre_hooks), bool(module._forward_hooks))
        for name, module in model.named_modules()
        if module._forward_pre_hooks or module._forward_hooks
    }


class Block(nn.Module):
    """A container with a producer, an activation module, dropout and a functional GELU in its own code."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc(x)))
        return F.gelu(x) if self.functional else x


def test_after_the_learning_pass_only_the_modules_that_matter_stay_hooked():
    # From the architecture: the root always; every activation module (its output is a layer);
    # a block whose own code calls an activation (the mode must be on in it) and each module it
    # calls (its frame turns the mode off again); no producer, dropout or plain container once
    # every module was learned and a pass ran with nothing new to learn.
    torch.manual_seed(0)
    model = nn.Sequential(Block(functional=False), Block(functional=True), nn.Linear(6, 2)).eval()
    x = torch.randn(4, 6)
    tracker = ActivityTracker(model)
    plans = []
    with torch.no_grad():
        for _ in range(2):  # two windows of two passes
            tracker.reset()
            with tracker:
                for _ in range(2):
                    tracker.start_pass()
                    plans.append(hooked(model))
                    model(x)
            assert hooked(model) == {}  # nothing left outside a window
    learning, learned, steady, next_window = plans
    assert set(learning) == {name for name, _ in model.named_modules()}  # every module, fully
    assert all(both == (True, True) for both in learning.values())
    full, post_only = (True, True), (False, True)
    # The pass after one that learned: producers still hooked (post-only), containers not.
    assert learned == {
        "": full, "0.fc": post_only, "0.act": post_only, "1": full, "1.fc": full, "1.act": full,
        "1.drop": full, "2": post_only,
    }  # fmt: skip
    expected = {"": full, "0.act": post_only, "1": full, "1.fc": full, "1.act": full, "1.drop": full}
    assert steady == expected and next_window == expected
    measured = tracker.compute()
    assert measured is not None and measured.names == ["0.act", "1.act", "1.gelu-fn"]
    assert measured.samples == 8  # the second window: two passes of 4 samples


class LateBranch(nn.Module):
    """A conv whose output goes through a ReLU only when told to: a layer first seen late."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(9, 9)  # 9 features on the last dim, as the 9 positions below
        self.conv = nn.Conv1d(8, 7, 3, padding=1)  # 7 channels on dim 1
        self.late = nn.ReLU()
        self.act = nn.ReLU()
        self.use_late = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 8, 9)
        y = self.act(self.lin(x))
        z = self.conv(x)
        return (self.late(z) if self.use_late else z).sum() + y.sum()


def test_a_layer_first_seen_without_producers_hooked_is_measured_from_the_next_pass():
    # Its producer (the conv: 7 channels on dim 1) is unknown while producers are unhooked; a
    # layout from the Linear before it would count 9 nodes. It waits one pass, then is measured.
    torch.manual_seed(0)
    model = LateBranch().eval()
    x = torch.randn(3, 8, 9, generator=torch.Generator().manual_seed(0))
    tracker = ActivityTracker(model)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for window in range(2):
            tracker.reset()
            with tracker:
                for index in range(3):
                    model.use_late = window == 1 and index >= 1  # first runs on window 2's second pass
                    tracker.start_pass()
                    model(x)
            measured = tracker.compute()
    # The only warning: a call site that runs in some passes only (no node dimension was guessed).
    assert {str(w.message).split(" ran ")[0] for w in caught} == {"Call site 'late'"}
    assert measured is not None and measured.names == ["act", "late"] and measured.n == [9, 7]
    late = measured.layers[1]
    # Measured on the third pass only (3 samples x 9 positions), from the same values as by hand.
    expected = torch.relu(model.conv(x)).transpose(0, 1).reshape(7, -1).mean(1)
    torch.testing.assert_close(late.activity.float(), expected, rtol=1e-5, atol=1e-6)


def test_a_model_copied_while_a_window_is_open_never_reports_to_the_tracker():
    # An EMA copy or a snapshot taken mid-window carries the window's hooks (they sit in the
    # modules' own dictionaries): the copies are inert, and the tracker is not copied with them.
    import copy
    import pickle

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    x = torch.randn(6, 4)
    tracker = ActivityTracker(model)
    with torch.no_grad():
        for _ in range(2):  # the second window runs the lean plan (the ReLU hooked alone)
            tracker.reset()
            with tracker:
                for _ in range(2):
                    tracker.start_pass()
                    model(x)
                twin = copy.deepcopy(model)
                saved = pickle.loads(pickle.dumps(model))
                twin(x * 100), saved(x * 100)  # would add 2 x 6 samples if they reported
    measured = tracker.compute()
    assert measured is not None and measured.samples == 12 and measured.names == ["1"]
    expected = torch.relu(model[0](x)).mean(0)
    torch.testing.assert_close(measured.layers[0].activity.float(), expected)
    assert all(hook is interception.inert for hook in twin[1]._forward_hooks.values())


class PlainBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class BorrowingBlock(nn.Module):
    """Its own code calls F.gelu (the mode is on in it) and a ReLU it does not own (no child of it)."""

    def __init__(self, borrowed: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.__dict__["borrowed"] = borrowed  # held, not registered: another block's child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.borrowed(self.fc(x)))


class SharedAcrossBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = PlainBlock()
        self.b = BorrowingBlock(self.a.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_a_module_also_called_from_code_that_needs_the_mode_keeps_its_frame_in_later_windows():
    # `a.act` is first called by `a` (plain code), then by `b`, whose own code calls F.gelu. Hooked
    # post-only it would run under `b`'s mode, and its ReLU would count again as `b.relu-fn`.
    torch.manual_seed(0)
    model = SharedAcrossBlocks().eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    tracker, windows = ActivityTracker(model), []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            tracker.reset()
            with torch.no_grad(), tracker:
                for _ in range(2):
                    tracker.start_pass()
                    model(x)
            windows.append(tracker.compute())
    first = windows[0]
    assert first is not None and first.names == ["a.act", "a.act-call2", "b.gelu-fn"]
    for later in windows[1:]:
        assert later is not None and later.names == first.names and later.samples == first.samples
        for one, other in zip(first.layers, later.layers):
            assert torch.equal(one.activity, other.activity)


class Stack(nn.Module):
    """Blocks held in a ModuleList (which has no forward of its own), called by the owner's code;
    ``functional``: the owner's own code also calls an activation between blocks.
    """

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.blocks = nn.ModuleList(PlainBlock() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
            x = torch.tanh(x) if self.functional else x
        return x


def steady_plan(model: nn.Module) -> tuple[dict[str, tuple[bool, bool]], list]:
    """The hooks of the third window's second pass, and each window's measurement."""
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    tracker, windows, plan = ActivityTracker(model), [], {}
    for _ in range(3):
        tracker.reset()
        with torch.no_grad(), tracker:
            for index in range(2):
                tracker.start_pass()
                if index == 1:
                    plan = hooked(model)
                model(x)
        windows.append(tracker.compute())
    return plan, windows


def test_blocks_in_a_module_list_are_hooked_as_children_of_its_owner():
    # A ModuleList is never called, so its children are called by its owner's code: unhooked
    # when that code needs no mode (they hid the blocks behind a full hook each, GPT-2's 12
    # blocks among them), fully hooked when it calls an activation (the mode must go off in them).
    torch.manual_seed(0)
    plain, plain_windows = steady_plan(Stack(functional=False).eval())
    full, post_only = (True, True), (False, True)
    blocks = [f"blocks.{index}" for index in range(3)]
    assert {name: plain[name] for name in plain if name.startswith("blocks.")} == {
        f"{block}.act": post_only for block in blocks
    }
    assert plain[""] == full
    torch.manual_seed(0)
    mixed, mixed_windows = steady_plan(Stack(functional=True).eval())
    for block in blocks:  # (inside a block, plain code again: its ReLU keeps a post-hook only)
        assert mixed[block] == full and mixed[f"{block}.act"] == post_only and f"{block}.fc" not in mixed
    # The same layers in every window: no block's ReLU counted as the owner's own tanh.
    assert plain_windows[0] is not None and plain_windows[0].names == [f"{b}.act" for b in blocks]
    assert mixed_windows[0] is not None
    tanh = ["tanh-fn", "tanh-fn-call2", "tanh-fn-call3"]  # in the order they are first seen
    assert mixed_windows[0].names == [
        name for pair in zip([f"{b}.act" for b in blocks], tanh) for name in pair
    ]
    for windows in (plain_windows, mixed_windows):
        for later in windows[1:]:
            assert later is not None and later.names == windows[0].names
            for one, other in zip(windows[0].layers, later.layers):
                assert torch.equal(one.activity, other.activity)
