"""Plain-PyTorch edge cases of what a layer and a node are: a user's composite activation module
(one layer, measured at its output), weights applied functionally (they decide the node dimension),
and a transposed output the rules cannot read (a warning naming the layer and its shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zoo_expect import assert_layers, measure_expecting, measure_quietly


class ScaledReLU(nn.Module):
    """A user's activation: a ReLU with a learnt scale and bias per feature."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.scale = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x):
        return self.scale * self.relu(x) + self.bias


def test_a_users_relu_with_scale_and_bias_is_one_layer_at_its_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), ScaledReLU(5), nn.Linear(5, 2))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([-1.0, 0.0, 0.5, 0.0, 2.0]))  # the output, not the ReLU's, decides
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    result = measure_quietly(model, x)
    assert_layers(result, [("1", 5)])
    with torch.no_grad():
        # mean |a|, the default statistic
        expected = (model[1].scale * F.relu(model[0](x)) + model[1].bias).double().abs().mean(0)
    assert torch.allclose(result.layers[0].activity, expected, atol=1e-6)
    assert result.layers[0].active.tolist() == (expected > 0.05).tolist()


class FunctionalWeights(nn.Module):
    """Weights used outside their modules: a depthwise-free conv over tokens, then ``W @ h``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 7, 3)
        self.proj = nn.Linear(7, 9)

    def forward(self, x):  # x: (batch, 9 tokens, 8 features)
        h = F.relu(F.conv1d(x.transpose(1, 2), self.conv.weight, self.conv.bias, padding=1))  # (batch, 7, 9)
        return torch.tanh(self.proj.weight @ h)  # (batch, 9 features, 9 tokens): the weight's rows on dim 1


def test_weights_applied_functionally_decide_the_node_dimension():
    torch.manual_seed(0)
    model = FunctionalWeights()
    x = torch.randn(3, 9, 8, generator=torch.Generator().manual_seed(1))
    result = measure_quietly(model, x)  # no warning: the conv's and the projection's weights tell
    assert_layers(result, [("relu-fn", 7), ("tanh-fn", 9)])
    with torch.no_grad():
        h = F.relu(F.conv1d(x.transpose(1, 2), model.conv.weight, model.conv.bias, padding=1))
        # mean |a| per feature, over tokens (the default statistic)
        expected = torch.tanh(model.proj.weight @ h).double().abs().mean(dim=(0, 2))
    assert torch.allclose(result.layers[1].activity, expected, atol=1e-6)


def test_a_transposed_output_is_never_read_as_features_last():
    class Transposed(nn.Module):
        """Mamba's layout: in_proj on (batch, tokens, 12), transposed, half of the channels gated."""

        def __init__(self) -> None:
            super().__init__()
            self.in_proj = nn.Linear(8, 12)

        def forward(self, x):
            inner, _ = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (batch, 6, 5 tokens)
            return F.silu(inner)

    message = r"Layer 'silu-fn' has shape \(2, 6, 5\) and was produced by Linear, which does not tell"
    result = measure_expecting(Transposed(), [torch.randn(2, 5, 8)], message)
    assert result.n == [6]  # dim 1, as the warning says; the 5 positions were never taken for nodes
