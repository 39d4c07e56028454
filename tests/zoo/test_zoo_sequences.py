"""Sequence models and functional activations at defaults: nn.TransformerEncoder (with and without a
padding mask), LSTM classifiers, and an MLP whose activations are all functional calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from zoo_expect import assert_layers, measure_quietly

from emergence_lightning.measure import measure_activity

VOCAB, WIDTH, FEEDFORWARD = 20, 16, 40


class Encoder(nn.Module):
    """Embedding -> nn.TransformerEncoder (default ReLU, a functional F.relu in each layer) -> head."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(
            WIDTH, nhead=2, dim_feedforward=FEEDFORWARD, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, tokens, padding_mask=None):
        return self.head(self.encoder(self.embed(tokens), src_key_padding_mask=padding_mask).mean(1))


TOKENS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))


def test_transformer_encoder_counts_feedforward_features_not_tokens():
    result = measure_quietly(Encoder(layers=3), {"tokens": TOKENS})
    assert_layers(result, [(f"encoder.layers.{i}.relu-fn", FEEDFORWARD) for i in range(3)])


def test_transformer_encoder_with_a_padding_mask():
    # In eval with a padding mask the encoder's fused fast path would run on nested tensors (the
    # first tracker crashed there). Inside the window PyTorch takes the plain path: every position,
    # padding included, is computed and averaged.
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    model = Encoder()
    result = measure_quietly(model, {"tokens": TOKENS, "padding_mask": mask})
    names = ["encoder.layers.0.relu-fn", "encoder.layers.1.relu-fn"]
    assert_layers(result, [(name, FEEDFORWARD) for name in names])
    # Independent: the plain path (train mode, dropout 0) with a standard hook on each linear1.
    captured = []
    handles = [layer.linear1.register_forward_hook(lambda m, i, o: captured.append(torch.relu(o)))
               for layer in model.encoder.layers]  # fmt: skip
    model.train()
    with torch.no_grad():
        model(TOKENS, mask)
    for handle in handles:
        handle.remove()
    for layer, hidden in zip(result.layers, captured):
        assert torch.allclose(layer.activity, hidden.double().mean(dim=(0, 1)), atol=1e-6)


class LSTMClassifier(nn.Module):
    def __init__(self, bidirectional: bool, head: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True, bidirectional=bidirectional)
        features = 24 if bidirectional else 12
        self.head = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, tokens):
        sequence, _ = self.lstm(self.embed(tokens))
        return self.head(sequence[:, -1])


def test_lstm_classifier_one_node_per_hidden_unit():
    assert_layers(measure_quietly(LSTMClassifier(False), TOKENS), [("lstm", 12), ("head.1", 16)])


def test_bidirectional_lstm_one_node_per_hidden_unit_and_direction():
    model = LSTMClassifier(True)
    result = measure_quietly(model, TOKENS)
    assert_layers(result, [("lstm", 24), ("head.1", 16)])
    # independent: the LSTM output's |a| (the default statistic) over batch and time steps
    with torch.no_grad():
        means = model.lstm(model.embed(TOKENS))[0].double().abs().mean(dim=(0, 1))
    assert torch.allclose(result.layers[0].activity, means, atol=1e-7)


def test_time_major_gru_counts_hidden_units():
    gru = nn.GRU(8, 10)  # (time, batch, features): the batch is dim 1
    model = nn.Sequential()
    model.add_module("gru", gru)
    x = torch.randn(5, 3, 8)
    result = measure_quietly(model, x)
    assert_layers(result, [("gru", 10)])
    assert result.samples == 5 * 3  # rows reduced per node: time steps x batch


class FunctionalMLP(nn.Module):
    """Every activation a functional call; F.relu called twice in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 24), nn.Linear(24, 20)
        self.fc3, self.fc4, self.out = nn.Linear(20, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        x = self.fc3(x).sigmoid()
        x = F.relu(self.fc4(x))
        return self.out(x)


class ModuleMLP(nn.Module):
    """The same computation with activation modules."""

    def __init__(self, source: FunctionalMLP) -> None:
        super().__init__()
        self.net = nn.Sequential(
            source.fc1, nn.ReLU(), source.fc2, nn.Tanh(), source.fc3, nn.Sigmoid(), source.fc4, nn.ReLU(),
            source.out,
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


def test_all_functional_mlp_equals_the_same_weights_with_activation_modules():
    torch.manual_seed(0)
    functional = FunctionalMLP()
    x = torch.randn(64, 8)
    result = measure_quietly(functional, x)
    assert_layers(result, [("relu-fn", 24), ("tanh-fn", 20), ("sigmoid-fn", 16), ("relu-fn-call2", 12)])
    modules = measure_quietly(ModuleMLP(functional), x)
    assert modules.names == ["net.1", "net.3", "net.5", "net.7"]
    assert result.a == modules.a and result.n == modules.n
    for mine, theirs in zip(result.layers, modules.layers):
        assert torch.equal(mine.activity, theirs.activity)
    assert 0 < sum(result.a) < sum(result.n)  # some nodes dead, some active: the comparison means something


def test_functional_measurement_is_not_the_pre_activation():
    torch.manual_seed(0)
    model = FunctionalMLP()
    x = torch.randn(64, 8)
    with torch.no_grad():
        post = F.relu(model.fc1(x)).double().mean(0)
    result = measure_activity(model, [x])
    assert torch.allclose(result.layers[0].activity, post)
    assert int((post > 0.05).sum()) == result.a[0]


class Swish(nn.Module):
    """A user's activation: no torch.nn activation class, built from torch.sigmoid."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def test_a_users_activation_module_is_one_layer_of_channels():
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3), Swish(), nn.Conv2d(5, 7, 3), nn.Mish(), nn.Conv2d(7, 9, 1), Swish()
    )
    result = measure_quietly(model, torch.randn(2, 3, 8, 8))
    assert_layers(result, [("1", 5), ("3", 7), ("5", 9)])
