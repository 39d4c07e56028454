"""State-space models: HF Mamba built untrained from a tiny config, on CPU (transformers' reference
PyTorch path: no `causal_conv1d` or `mamba_ssm` kernels). Its SiLU and softplus act on
`(batch, channels, tokens)`, after weights applied functionally (`F.conv1d(x, conv1d.weight)`,
`dt_proj.weight @ x`): a node is one of the 64 inner channels, never one of the 12 positions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from zoo_expect import assert_layers, measure_quietly

transformers = pytest.importorskip("transformers")

HIDDEN, INNER, TOKENS = 32, 64, 12
IDS = torch.randint(1, 50, (2, TOKENS), generator=torch.Generator().manual_seed(0))


def mamba() -> torch.nn.Module:
    config = transformers.MambaConfig(
        vocab_size=50, hidden_size=HIDDEN, intermediate_size=INNER, num_hidden_layers=2, state_size=8
    )
    torch.manual_seed(0)
    return transformers.MambaForCausalLM(config)


def test_mamba_counts_inner_channels_not_token_positions():
    model = mamba()
    result = measure_quietly(model, {"input_ids": IDS})
    # Per mixer: SiLU after the causal depthwise conv, softplus of the time step, SiLU of the gate.
    expected = []
    for layer in range(2):
        mixer = f"backbone.layers.{layer}.mixer"
        expected += [
            (f"{mixer}.silu-fn", INNER),
            (f"{mixer}.softplus-fn", INNER),
            (f"{mixer}.silu-fn-call2", INNER),
        ]
    assert_layers(result, expected)
    # Independent: the first mixer's conv SiLU per channel, from its in_proj output read by a hook
    # and the causal depthwise conv written out (pad kernel - 1, keep the first 12 steps).
    mixer = model.backbone.layers[0].mixer
    seen = {}
    hook = mixer.in_proj.register_forward_hook(lambda m, a, out: seen.update(projected=out))
    with torch.no_grad():
        model.eval()(input_ids=IDS)
        hook.remove()
        inner = seen["projected"].transpose(1, 2)[:, :INNER]
        padding = mixer.conv1d.kernel_size[0] - 1
        conv = F.conv1d(inner, mixer.conv1d.weight, mixer.conv1d.bias, padding=padding, groups=INNER)
        # mean |a|, the default statistic
        expected_activity = F.silu(conv[:, :, :TOKENS]).double().abs().mean(dim=(0, 2))
    assert torch.allclose(result.layers[0].activity, expected_activity, atol=1e-6)
