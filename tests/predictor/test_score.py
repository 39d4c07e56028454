"""Scoring untrained models: E at init, NASWOT and SynFlow against hand computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from emergence_lightning.predictor import (
    binary_codes,
    hamming_kernel,
    naswot,
    proxy_scores,
    rank_models,
    score_at_init,
    synflow,
)


def _set(linear: nn.Linear, weight, bias=None) -> nn.Linear:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return linear


def _planted_emergence_net() -> nn.Sequential:
    """Zero weights, so each node's output is its bias: active nodes per layer (1, 1, 2) of (3, 2, 2)."""
    return nn.Sequential(
        _set(nn.Linear(4, 3), torch.zeros(3, 4).tolist(), [1.0, 0.0, 0.0]),
        nn.ReLU(),
        _set(nn.Linear(3, 2), torch.zeros(2, 3).tolist(), [1.0, 0.0]),
        nn.ReLU(),
        _set(nn.Linear(2, 2), torch.zeros(2, 2).tolist(), [1.0, 1.0]),
        nn.ReLU(),
        nn.Linear(2, 1),
    )


def test_score_at_init_matches_the_design_vector():
    # DESIGN.md's vector: n = (3, 2, 2), a = (1, 1, 2) gives E = 12 (paper variant), 8 (induced).
    model = _planted_emergence_net()
    batches = [torch.randn(5, 4), (torch.randn(3, 4), torch.zeros(3))]  # a plain batch and an (x, y) pair
    score = score_at_init(model, batches)
    params = (4 * 3 + 3) + (3 * 2 + 2) + (2 * 2 + 2) + (2 * 1 + 1)
    assert (score.n, score.a) == ([3, 2, 2], [1, 1, 2])
    assert score.E == 12
    assert score.num_parameters == params == 32
    assert score.relative == pytest.approx(12 / 32)
    assert score.log10_E == pytest.approx(math.log10(13))
    assert list(score.layer_fractions.values()) == pytest.approx([1 / 3, 1 / 2, 1.0])
    assert score_at_init(model, batches, variant="induced").E == 8
    assert model.training  # modes restored


def test_score_at_init_refuses_a_tensor_and_empty_batches():
    model = _planted_emergence_net()
    with pytest.raises(TypeError, match="`batches` must be an iterable of batches"):
        score_at_init(model, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="`batches` gave no samples"):
        score_at_init(model, [])


def test_naswot_of_a_known_code_matrix():
    # Codes by hand: x1 = (1, 2) -> pre-activations (1, 2, -1) -> code 110; x2 = (2, -1) -> (2, -1, 3) -> 101.
    # N_A = 3 units, Hamming distance 2: K = [[3, 1], [1, 3]], det 8.
    layer = _set(nn.Linear(2, 3, bias=False), [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    inputs = torch.tensor([[1.0, 2.0], [2.0, -1.0]])
    for activation in (nn.ReLU(), nn.Tanh(), nn.GELU()):  # each is positive exactly where its input is
        model = nn.Sequential(layer, activation)
        assert binary_codes(model, inputs).tolist() == [[True, True, False], [True, False, True]]
        assert naswot(model, inputs) == pytest.approx(math.log(8.0))


def test_naswot_codes_span_every_layer_and_pixel():
    # Two activation layers: the code of a sample is both layers' bits side by side (2 + 2 units).
    model = nn.Sequential(
        _set(nn.Linear(1, 2, bias=False), [[1.0], [-1.0]]), nn.ReLU(),
        _set(nn.Linear(2, 2, bias=False), [[1.0, 0.0], [0.0, -1.0]]), nn.ReLU(),
    )  # fmt: skip
    inputs = torch.tensor([[1.0], [-1.0]])  # codes 10|10 and 01|00: Hamming 3, N_A = 4
    assert hamming_kernel(binary_codes(model, inputs)).tolist() == [[4.0, 1.0], [1.0, 4.0]]
    assert naswot(model, inputs) == pytest.approx(math.log(15.0))
    conv = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU())
    assert binary_codes(conv, torch.randn(4, 1, 5, 5)).shape == (4, 3 * 5 * 5)


def test_naswot_is_minus_inf_when_two_inputs_share_a_code():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = torch.randn(1, 3)
    assert naswot(model, torch.cat([x, x])) == -math.inf


def test_naswot_needs_activation_modules():
    class Functional(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with pytest.raises(ValueError, match="Functional has none of"):
        naswot(Functional(), torch.zeros(2, 3))


def test_synflow_of_a_two_layer_linear_net_by_hand():
    w1 = [[1.0, -2.0], [0.5, 1.0]]
    w2 = [[3.0, -1.0]]
    model = nn.Sequential(
        _set(nn.Linear(2, 2, bias=False), w1), nn.ReLU(), _set(nn.Linear(2, 1, bias=False), w2)
    )
    # R = 1^T |W2| |W1| 1 = 3 * (1 + 2) + 1 * (0.5 + 1) = 10.5.
    # Layer 2: |w2_j| * dR/d|w2_j| = |w2_j| * sum_i |w1_ji| -> 9 + 1.5; layer 1: |w1_ji| * |w2_j| -> 9 + 1.5.
    assert synflow(model, (2,)) == pytest.approx(21.0)
    assert model[0].weight[0, 1].item() == -2.0  # the model's own weights are untouched


def test_synflow_of_a_deep_relu_net_is_depth_times_the_path_norm():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 7, bias=False),
        nn.ReLU(),
        nn.Linear(7, 4, bias=False),
        nn.ReLU(),
        nn.Linear(4, 3, bias=False),
    )
    weights = [np.abs(m.weight.detach().double().numpy()) for m in model if isinstance(m, nn.Linear)]
    path_norm = (weights[2] @ weights[1] @ weights[0] @ np.ones(5)).sum()
    # Each layer's scores sum to R for a bias-free ReLU net (the paper's conservation law): 3 layers, 3 R.
    assert synflow(model, (5,)) == pytest.approx(3 * path_norm, rel=1e-12)


def test_synflow_runs_batch_norm_on_running_statistics_and_restores_nothing_it_did_not_touch():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score = synflow(model, (3,))  # one all-ones sample: training-mode batch norm would fail or zero it
    assert math.isfinite(score) and score > 0
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_synflow_refuses_a_bad_input_shape():
    with pytest.raises(ValueError, match=r"`input_shape` must be positive ints .* got \(0, 3\)"):
        synflow(nn.Linear(3, 1), (0, 3))


def test_rank_models_orders_by_the_chosen_score():
    torch.manual_seed(0)
    models = {
        "narrow": nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)),
        "wide": nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        "middle": nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
    }
    batches = [torch.randn(8, 4)]
    ranked = rank_models(models, batches, by="params")
    # #params by hand: 4*w + w + w*2 + 2 = 7w + 2 for width w = 8, 4, 2.
    assert [(r.rank, r.name, r.scores["params"]) for r in ranked] == [
        (1, "wide", 58),
        (2, "middle", 30),
        (3, "narrow", 16),
    ]
    planted = rank_models(
        {"zero": models["narrow"], "twelve": _planted_emergence_net()}, [torch.randn(4, 4)], by="E"
    )
    assert [r.name for r in planted] == ["twelve", "zero"] and planted[0].scores["E"] == 12
    with pytest.raises(ValueError, match="`by` must be one of .* got 'accuracy'"):
        rank_models(models, batches, by="accuracy")


def test_proxy_scores_give_every_score():
    scores = proxy_scores(_planted_emergence_net(), [torch.randn(6, 4)])
    assert set(scores) == {"E", "relative", "log10_E", "naswot", "synflow", "params"}
    assert scores["E"] == 12 and scores["params"] == 32
