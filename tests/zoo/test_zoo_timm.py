"""timm models built untrained (pretrained=False, no download) at 32x32 or 64x64: every layer and its
node count at defaults. timm's activation classes are not torch.nn's: they are found by what they do.
"""

from __future__ import annotations

import pytest
import torch
from zoo_expect import assert_layers, measure_quietly

timm = pytest.importorskip("timm")

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(name: str, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def test_convnext_atto_channels_last_mlp():
    # ConvNeXt-atto: depths (2, 2, 6, 2), dims (40, 80, 160, 320), MLP ratio 4, on (N, H, W, C).
    expected = []
    for stage, (depth, dim) in enumerate(zip([2, 2, 6, 2], [40, 80, 160, 320])):
        expected += [(f"stages.{stage}.blocks.{block}.mlp.act", 4 * dim) for block in range(depth)]
    assert_layers(measure_quietly(build("convnext_atto"), IMAGES), expected)


def test_vit_tiny_counts_features_not_tokens():
    # ViT-Ti/16: 12 blocks, width 192, MLP 768; at 32x32 only 4 patches + 1 class token.
    model = build("vit_tiny_patch16_224", img_size=32)
    expected = [(f"blocks.{i}.mlp.act", 4 * 192) for i in range(12)]
    assert_layers(measure_quietly(model, IMAGES), expected)


def test_resnet18_separate_activation_modules():
    expected = [("act1", 64)]
    for stage, planes in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            expected += [(f"layer{stage}.{block}.act1", planes), (f"layer{stage}.{block}.act2", planes)]
    assert_layers(measure_quietly(build("resnet18"), IMAGES), expected)


def test_efficientnet_b0_activations_inside_norm_layers():
    # timm fuses the activation into BatchNormAct2d (`bn1.act`); squeeze-excite is `se.act1` / `se.gate`.
    stages = [(1, 32, 16, 1), (6, 16, 24, 2), (6, 24, 40, 2), (6, 40, 80, 3), (6, 80, 112, 3),
              (6, 112, 192, 4), (6, 192, 320, 1)]  # fmt: skip
    expected = [("bn1.act", 32)]
    for stage, (ratio, inp, out, repeats) in enumerate(stages):
        for block in range(repeats):
            channels = inp if block == 0 else out
            name = f"blocks.{stage}.{block}"
            if ratio == 1:  # depthwise-separable block: depthwise conv + act, SE, projection with no act
                expected += [(f"{name}.bn1.act", channels)]
            else:  # inverted residual: expansion + act, depthwise + act, SE, projection
                expected += [(f"{name}.bn1.act", channels * ratio), (f"{name}.bn2.act", channels * ratio)]
            expected += [(f"{name}.se.act1", max(1, channels // 4)), (f"{name}.se.gate", channels * ratio)]
    expected.append(("bn2.act", 1280))
    assert_layers(measure_quietly(build("efficientnet_b0"), IMAGES), expected)


def test_mobilevit_xxs_hybrid_conv_and_transformer_each_decided_per_layer():
    # Mehta & Rastegari 2022, MobileViT-XXS: stem 16; inverted residuals with expansion 2; MobileViT
    # blocks (channels, transformer width, depth) = (48, 64, 2), (64, 80, 4), (80, 96, 3), MLP ratio 2;
    # final 1x1 conv 320. Conv layers count channels (dim 1); transformer MLPs count features (last dim).
    expected = [("stem.bn.act", 16)]

    def inverted_residual(name: str, inp: int) -> None:
        expected.extend([(f"{name}.conv1_1x1.bn.act", 2 * inp), (f"{name}.conv2_kxk.bn.act", 2 * inp)])

    inverted_residual("stages.0.0", 16)
    inverted_residual("stages.1.0", 16)
    inverted_residual("stages.1.1", 24)
    inverted_residual("stages.1.2", 24)
    inp = 24
    for stage, (channels, width, depth) in enumerate([(48, 64, 2), (64, 80, 4), (80, 96, 3)], start=2):
        inverted_residual(f"stages.{stage}.0", inp)
        block = f"stages.{stage}.1"
        expected.append((f"{block}.conv_kxk.bn.act", channels))
        expected += [(f"{block}.transformer.{i}.mlp.act", 2 * width) for i in range(depth)]
        expected += [(f"{block}.conv_proj.bn.act", channels), (f"{block}.conv_fusion.bn.act", channels)]
        inp = channels
    expected.append(("final_conv.bn.act", 320))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_layers(measure_quietly(build("mobilevit_xxs"), images), expected)


def test_levit_attention_output_counts_value_features_not_tokens():
    # Graham et al. 2021, LeViT-128S: widths (128, 256, 384), key dim 16, heads (4, 6, 8), depths
    # (2, 3, 4); attention values are 2 x key dim per head (4 x in the shrinking attention of each
    # downsampling, whose heads are in_width / 16); MLP ratio 2. The attention's Hardswish sees
    # (batch, tokens, heads x value dim) after a BatchNorm1d that ran on flattened (batch * tokens,
    # qkv width) rows: its width matches neither dim, so the norm's own output decides (last dim).
    expected = [("stem.act1", 16), ("stem.act2", 32), ("stem.act3", 64)]
    widths, heads, depths = [128, 256, 384], [4, 6, 8], [2, 3, 4]
    for stage in range(3):
        if stage:
            down = f"stages.{stage}.downsample"
            expected += [(f"{down}.attn_downsample.proj.act", widths[stage - 1] // 16 * 16 * 4),
                         (f"{down}.mlp.act", 2 * widths[stage])]  # fmt: skip
        for block in range(depths[stage]):
            name = f"stages.{stage}.blocks.{block}"
            expected += [
                (f"{name}.attn.proj.act", heads[stage] * 2 * 16),
                (f"{name}.mlp.act", 2 * widths[stage]),
            ]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_layers(measure_quietly(build("levit_128s", img_size=64), images), expected)


def test_caformer_star_relu_and_squared_relu_are_one_layer_at_their_output():
    # Yu et al. 2023, CAFormer-S18: depths (3, 3, 9, 3), dims (64, 128, 320, 512); separable-conv token
    # mixers (expansion 2, StarReLU = s * relu(x) ** 2 + b) in stages 0-1, attention in 2-3; MLPs with
    # ratio 4 and StarReLU; an MLP head with ratio 4 and SquaredReLU = relu(x) ** 2. Each composite
    # module is one layer measured at its own output, not at the nn.ReLU inside it.
    expected = []
    for stage, (depth, dim) in enumerate(zip([3, 3, 9, 3], [64, 128, 320, 512])):
        for block in range(depth):
            name = f"stages.{stage}.blocks.{block}"
            if stage < 2:
                expected.append((f"{name}.token_mixer.act1", 2 * dim))
            expected.append((f"{name}.mlp.act", 4 * dim))
    expected.append(("head.fc.act", 4 * 512))
    model = build("caformer_s18")
    result = measure_quietly(model, IMAGES)
    assert_layers(result, expected)
    # Independent: the first StarReLU's output (after 1x1 convs: channels first) by a standard forward hook.
    captured = []
    handle = (
        model.stages[0]
        .blocks[0]
        .token_mixer.act1.register_forward_hook(lambda m, a, out: captured.append(out))
    )
    with torch.no_grad():
        model.eval()(IMAGES)
    handle.remove()
    assert torch.allclose(result.layers[0].activity, captured[0].double().mean(dim=(0, 2, 3)), atol=1e-5)
