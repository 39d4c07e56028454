"""Later forward passes of a window measure what its first one does, on the families whose
measurement needs torch calls other than activations: MoE blocks (weight accesses tell each row's
expert), Mamba and user code applying a module's weight functionally (the producer decides the node
dimension), and a composite activation module. The first pass of a window runs fully intercepted;
later ones only where its learning pass showed that a module's code needs it.
"""

from __future__ import annotations

import pytest
import torch
from test_zoo_composite import FunctionalWeights, ScaledReLU
from test_zoo_moe import IDS, TopKMoE, mixtral, plant_experts
from torch import nn
from zoo_expect import assert_later_passes_agree


@pytest.mark.parametrize("implementation", [None, "batched_mm", "eager"])
def test_mixtral_experts_on_later_passes(implementation):
    model = mixtral(implementation)
    plant_experts(model)
    result = assert_later_passes_agree(model, {"input_ids": IDS})
    assert result.names == ["model.layers.0.mlp.experts.act_fn"]


def test_a_plain_top_k_moe_on_later_passes():
    torch.manual_seed(0)
    result = assert_later_passes_agree(
        TopKMoE(), torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    )
    assert result.names == ["experts.each.act"] and result.n == [30]


def test_mamba_channels_on_later_passes():
    pytest.importorskip("transformers")
    from test_zoo_ssm import IDS as MAMBA_IDS
    from test_zoo_ssm import INNER, mamba

    result = assert_later_passes_agree(mamba(), {"input_ids": MAMBA_IDS})
    assert set(result.n) == {INNER}  # channels, never the 12 positions


def test_weights_applied_functionally_on_later_passes():
    torch.manual_seed(0)
    x = torch.randn(3, 9, 8, generator=torch.Generator().manual_seed(1))
    result = assert_later_passes_agree(FunctionalWeights(), x)
    assert result.n == [7, 9]


def test_a_composite_activation_module_on_later_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), ScaledReLU(5), nn.Linear(5, 2))
    result = assert_later_passes_agree(model, torch.randn(16, 6, generator=torch.Generator().manual_seed(1)))
    assert result.names == ["1"]
