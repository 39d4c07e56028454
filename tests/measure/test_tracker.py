import math
import warnings

import pytest
import torch
from tiny_models import DefinedOutOfOrder, FunctionalReLU, SharedReLU, mlp
from torch import nn

from emergence_lightning.measure import ActivityTracker, measure_activity


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_mean_statistic_matches_manual_computation():
    torch.manual_seed(0)
    model = mlp(hidden=(16, 12))
    x = torch.randn(50, 8)
    result = measure_activity(model, [x[:20], x[20:]])
    h1 = model[1](model[0](x))
    h2 = model[3](model[2](h1))
    assert result.names == ["1", "3"]
    assert result.n == [16, 12]
    assert result.a == [int((h1.mean(0) > 0.05).sum()), int((h2.mean(0) > 0.05).sum())]
    assert torch.allclose(result.layers[0].activity, h1.mean(0).double(), atol=1e-6)
    assert result.samples == 50


def test_conv_nodes_are_channels_averaged_over_positions():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU())
    x = torch.randn(4, 2, 9, 9)
    result = measure_activity(conv, [x])
    out = conv(x)
    assert result.n == [5]
    assert torch.allclose(result.layers[0].activity, out.mean(dim=(0, 2, 3)).double(), atol=1e-6)


def test_fraction_and_max_statistics():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    # node 0 fires on 1 of 4 samples, node 1 on 3 of 4, node 2 never
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    fraction = measure_activity(model, [x], statistic="fraction")
    assert fraction.layers[0].activity.tolist() == [0.25, 0.75, 0.0]
    assert fraction.a == [1]  # above the default firing rate 0.5
    assert measure_activity(model, [x], statistic="fraction", min_firing_rate=0.2).a == [2]
    assert measure_activity(model, [x], statistic="max").a == [2]
    assert measure_activity(model, [x], statistic="mean").a == [2]  # means 0.25, 0.75, 0


def test_layers_follow_forward_order_not_definition_order():
    model = DefinedOutOfOrder()
    with ActivityTracker(model) as tracker:
        assert tracker.layer_names == []  # layers are found as the forward pass runs them
        model(torch.randn(3, 8))
    assert tracker.layer_names == ["early", "late"]
    assert tracker.compute().n == [5, 4]


def test_functional_activation_is_a_layer_and_equals_the_module_version():
    torch.manual_seed(0)
    model = FunctionalReLU()
    x = torch.randn(30, 8)
    result = measure_activity(model, [x])
    hidden = torch.relu(model.fc1(x))  # independent: the activation computed by hand
    assert result.names == ["relu-fn"] and result.n == [6]
    assert result.a == [int((hidden.mean(0) > 0.05).sum())]
    # `layers=["fc1"]` still measures the module's own output, the pre-activation.
    pre = measure_activity(model, [x], layers=["fc1"])
    # the default statistic: mean |a|
    assert pre.names == ["fc1"] and pre.a == [int((model.fc1(x).abs().mean(0) > 0.05).sum())]


def test_model_without_any_activation_is_refused_after_it_ran():
    with pytest.raises(ValueError, match=r"Linear ran, but no activation was found.*layers=\["):
        measure_activity(nn.Linear(4, 2), [torch.randn(3, 4)])


def test_unknown_layer_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"don't exist: \['encoder'\]. Some valid names: \['0', '1'"):
        ActivityTracker(mlp(), layers=["encoder"])


def test_reused_module_gives_one_layer_per_call():
    torch.manual_seed(0)
    model = SharedReLU()
    x = torch.randn(20, 8)
    with ActivityTracker(model) as tracker:
        tracker.start_pass()
        model(x)
    result = tracker.compute()
    first = torch.relu(model.fc1(x))
    second = torch.relu(model.fc2(first))
    assert result.names == ["act", "act-call2"]
    assert result.a == [int((first.mean(0) > 0.05).sum()), int((second.mean(0) > 0.05).sum())]
    assert hook_count(model) == 0


def test_include_input_and_output():
    model = mlp(hidden=(5,))
    result = measure_activity(model, [torch.rand(4, 8)], include_input=True, include_output=True)
    assert result.names == ["model-input", "1", "model-output"]
    assert result.n == [8, 5, 3]


def test_nan_is_never_active_and_warns_with_layer_name():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, float("inf")]])
    with pytest.warns(RuntimeWarning, match=r"Layer '1': 2 of 3 nodes produced NaN or inf"):
        result = measure_activity(model, [x])
    assert result.layers[0].active.tolist() == [True, False, False]
    assert math.isnan(result.layers[0].activity[1])


def test_hooks_removed_and_modes_restored_even_when_forward_raises():
    model = mlp()
    model.train()
    model[1].eval()  # a mixed state the user chose
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied"):
        measure_activity(model, [torch.randn(2, 5)])
    assert hook_count(model) == 0
    assert model.training and not model[1].training and model[3].training


def test_no_samples_gives_no_measurement():
    assert measure_activity(mlp(), []) is None


def test_sample_limit_drops_padding_rows():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    tracker = ActivityTracker(model)
    tracker.limit_samples(3)
    tracker.reset()
    with tracker:
        model(torch.ones(2, 2))
        model(torch.stack([torch.ones(2), torch.ones(2), -torch.ones(2) * 100]))  # last row is padding
    result = tracker.compute()
    assert result.samples == 3
    assert result.layers[0].activity.tolist() == [1.0, 1.0]


def test_sequence_outputs_with_node_dim():
    model = nn.Sequential(nn.Identity(), nn.GELU())
    x = torch.randn(4, 7, 5)  # (batch, length, features)
    assert measure_activity(model, [x], node_dim=-1).n == [5]
    assert measure_activity(model, [x]).n == [7]  # default reads dim 1 as channels


def test_no_host_sync_in_hooks():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA to detect host synchronisation")
    model = mlp().cuda()
    tracker = ActivityTracker(model).attach()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            model(torch.randn(4, 8, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
        tracker.detach()
    assert tracker.compute().n == [16, 12]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": -0.1}, ValueError, r"`threshold` must be a finite number >= 0, got -0.1"),
        ({"threshold": float("nan")}, ValueError, r"`threshold` must be a finite number >= 0, got nan"),
        ({"threshold": "high"}, TypeError, r"`threshold` must be a number, got 'high'"),
        ({"statistic": "median"}, ValueError, r"`statistic` must be one of .*got 'median'"),
        ({"node_dim": 0}, ValueError, r"`node_dim` cannot be 0"),
        ({"min_firing_rate": 1.5}, ValueError, r"`min_firing_rate` must be in \[0, 1\), got 1.5"),
        ({"layers": "1"}, TypeError, r"`layers` must be a sequence of module names"),
        ({"layers": []}, ValueError, r"`layers` must name at least one module"),
        ({"layers": ["1", "1"]}, ValueError, r"`layers` names a module twice"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ActivityTracker(mlp(), **kwargs)


def test_no_warning_on_clean_data():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure_activity(mlp(), [torch.randn(3, 8)])


def test_copy_of_model_made_while_attached_is_ignored():
    import copy

    model = mlp()
    with ActivityTracker(model) as tracker:
        twin = copy.deepcopy(model)  # carries the hooks along
        twin(torch.randn(3, 8))
        twin(torch.randn(3, 8))
        model(torch.randn(2, 8))
    assert tracker.compute().samples == 2


def test_sequences_of_varying_length_count_features_not_time_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    short, long = torch.randn(2, 5, 4), torch.randn(2, 7, 4)
    result = measure_activity(model, [short, long])
    outputs = torch.cat([model(short).reshape(-1, 3), model(long).reshape(-1, 3)])  # every token a row
    assert result.n == [3]
    assert result.a == [int((outputs.mean(0) > 0.05).sum())]


def test_output_without_node_dimension_is_named_and_skipped():
    class Gate(nn.Module):  # a per-sample scalar gate: (batch,) has no nodes
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return h * torch.sigmoid(h.sum(1)).unsqueeze(1)

    with pytest.warns(
        RuntimeWarning, match=r"Layer 'sigmoid-fn' produced a tensor of shape \(3,\).*not measured"
    ):
        result = measure_activity(Gate(), [torch.randn(3, 4)])
    assert result.names == ["relu-fn"]


def test_window_leaves_no_global_hook_and_no_function_mode():
    from torch.nn.modules import module as module_hooks

    model = mlp()
    x = torch.randn(5, 8)
    expected = model(x)
    measure_activity(model, [x])
    assert not module_hooks._global_forward_hooks and not module_hooks._global_forward_pre_hooks
    assert torch.overrides._get_current_function_mode_stack() == []
    assert torch.equal(model(x), expected)


def test_node_dim_per_layer_mapping():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh())
    result = measure_activity(model, [torch.randn(2, 5, 4)], node_dim={"1": 1})
    assert result.names == ["1", "3"] and result.n == [5, 3]  # time steps on request, features by rule


def test_undecidable_node_dim_warns_naming_the_layer_and_the_fix():
    # An activation on the raw (batch, 4, 5) input: no producing layer says which dim holds nodes.
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(20, 3), nn.Tanh())
    x = torch.randn(6, 4, 5)
    message = r"Layer '0' has shape \(6, 4, 5\) and was produced by no layer with parameters.*counting dim 1"
    with pytest.warns(RuntimeWarning, match=message + r". Pass `node_dim=\{'0': d\}` to choose"):
        result = measure_activity(model, [x])
    assert result.names == ["0", "3"] and result.n == [4, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = measure_activity(model, [x], node_dim={"0": 2})  # the named fix silences it
    assert chosen.n == [5, 3]
    assert torch.allclose(chosen.layers[0].activity, torch.relu(x).double().mean(dim=(0, 1)))


def test_producer_with_a_feature_count_matching_neither_dim_warns():
    class Odd(nn.Module):  # parameters of its own, but no size that matches the output's dims
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(7))

        def forward(self, x):
            return x * self.scale.mean()

    model = nn.Sequential(Odd(), nn.GELU())
    with pytest.warns(RuntimeWarning, match=r"Layer '1' has shape \(2, 3, 5\) and was produced by Odd"):
        assert measure_activity(model, [torch.randn(2, 3, 5)]).n == [3]


def test_reshaped_output_keeps_the_side_its_producer_put_features_on():
    class TokensThroughFlatNorm(nn.Module):
        """LeViT's pattern: Linear + BatchNorm1d on (batch * tokens, 12), then a head merge to 4."""

        def __init__(self) -> None:
            super().__init__()
            self.fc, self.norm, self.act = nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Hardswish()

        def forward(self, x):
            batch, tokens, _ = x.shape
            h = self.norm(self.fc(x).flatten(0, 1)).view(batch, tokens, 3, 4).sum(2)  # (batch, tokens, 4)
            return self.act(h)

    class PixelShuffled(nn.Module):
        """A conv's 8 channels become 2 channels of a 2x larger image: channels stay on dim 1."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.act(nn.functional.pixel_shuffle(self.conv(x), 2))

    x = torch.randn(2, 5, 8)
    model = TokensThroughFlatNorm()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens = measure_activity(model, [x])
        shuffled = measure_activity(PixelShuffled(), [torch.randn(2, 3, 5, 5)])
    model.eval()
    with torch.no_grad():
        expected = model(x).double().abs().mean(dim=(0, 1))  # the default statistic: mean |a|
    assert tokens.n == [4] and torch.allclose(tokens.layers[0].activity, expected)
    assert shuffled.n == [2]


def test_include_input_counts_what_the_first_module_reads():
    # A conv reads channels (dim 1); a Linear on (batch, tokens, features) reads features (last dim).
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    images = torch.randn(2, 3, 6, 6)
    tokens = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    sequence = torch.randn(2, 7, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seen_images = measure_activity(conv, [images], include_input=True)
        seen_tokens = measure_activity(tokens, [sequence], include_input=True)
    assert seen_images.names[0] == "model-input" and seen_images.n[0] == 3
    # the default statistic, mean |a|: the data is signed
    assert torch.allclose(seen_images.layers[0].activity, images.double().abs().mean(dim=(0, 2, 3)))
    assert seen_tokens.n[0] == 6
    assert torch.allclose(seen_tokens.layers[0].activity, sequence.double().abs().mean(dim=(0, 1)))


def test_heads_split_off_a_linear_output_still_warn():
    class LinearAttentionFeatures(nn.Module):
        """elu(q) + 1 per head, as linear attention does: (batch, heads, tokens, head dim)."""

        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(8, 12)

        def forward(self, x):
            batch, tokens, _ = x.shape
            q = self.q(x).view(batch, tokens, 2, 6).transpose(1, 2)  # (batch, 2 heads, tokens, 6)
            return nn.functional.elu(q) + 1

    message = r"Layer 'elu-fn' has shape \(3, 2, 5, 6\) and was produced by Linear"
    with pytest.warns(RuntimeWarning, match=message):
        measure_activity(LinearAttentionFeatures(), [torch.randn(3, 5, 8)])


class ShiftedReLU(nn.ReLU):
    """A ReLU subclass whose output goes negative: it must not be summed as a never-negative one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) - 0.5


class FunctionalSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x))  # a functional call site, never negative


@pytest.mark.parametrize(
    "model",
    [
        lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU()),
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU6(), nn.Conv2d(3, 3, 1), nn.Sigmoid()),
        lambda: nn.Sequential(nn.Linear(4, 6), nn.Softplus(), nn.Linear(6, 5), nn.Hardsigmoid()),
        FunctionalSigmoid,
    ],
    ids=["relu", "conv relu6 sigmoid", "softplus hardsigmoid", "functional sigmoid"],
)
def test_mean_abs_of_never_negative_activations_is_the_mean_bit_for_bit(model):
    # These outputs are summed as they are (no |a| written): the activities must be identical to the
    # paper's mean over several windows and passes (the second window runs the lean hook plan).
    torch.manual_seed(0)
    net = model().eval()
    shape = (
        (5, 2, 6, 6) if isinstance(net[0] if isinstance(net, nn.Sequential) else net, nn.Conv2d) else (5, 4)
    )
    batches = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    trackers = {statistic: ActivityTracker(net, statistic=statistic) for statistic in ("mean", "mean_abs")}
    results = {}
    for statistic, tracker in trackers.items():
        for _ in range(2):
            tracker.reset()
            with torch.no_grad(), tracker:
                for batch in batches:
                    tracker.start_pass()
                    net(batch)
            results[statistic] = tracker.compute()
    paper, absolute = results["mean"], results["mean_abs"]
    assert paper is not None and absolute is not None and paper.names == absolute.names
    for a, b in zip(paper.layers, absolute.layers):
        assert torch.equal(a.activity, b.activity)


def test_a_relu_subclass_that_goes_negative_is_measured_by_its_absolute_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), ShiftedReLU()).eval()
    x = torch.randn(7, 4)
    tracker = ActivityTracker(net)
    for _ in range(2):  # the learning window, then the lean one
        tracker.reset()
        with torch.no_grad(), tracker:
            for _ in range(2):
                tracker.start_pass()
                net(x)
    measured = tracker.compute()
    expected = (torch.relu(net[0](x)) - 0.5).abs().mean(0).double()  # by hand, in float64
    assert measured is not None and measured.names == ["1"]
    torch.testing.assert_close(measured.layers[0].activity, expected.detach(), rtol=1e-6, atol=1e-7)
