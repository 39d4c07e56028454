import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from emergence_lightning import count_parameters


def test_counts_trainable_elements():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert count_parameters(model) == (4 * 3 + 3) + (3 * 2 + 2)


def test_respects_pruning_masks():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.3)
    # 30 of the 100 weights are masked; the bias and the second layer are untouched
    assert count_parameters(model) == 70 + 10 + 22
    prune.remove(model[0], "weight")  # permanent: zeros are ordinary trainable weights again
    assert count_parameters(model) == 100 + 10 + 22


def test_global_pruning_masks():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    targets = [(model[0], "weight"), (model[1], "weight")]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.5)
    masked = sum(int(m.weight_mask.sum()) for m in model)
    assert masked == 100
    assert count_parameters(model) == 100 + 20


def test_frozen_and_shared_parameters():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(3, 1))
    model[3].requires_grad_(False)
    assert count_parameters(model) == 12


def test_no_parameters():
    assert count_parameters(nn.ReLU()) == 0


def test_rejects_non_modules():
    with pytest.raises(TypeError, match=r"`module` must be a torch.nn.Module, got Tensor"):
        count_parameters(torch.zeros(3))
