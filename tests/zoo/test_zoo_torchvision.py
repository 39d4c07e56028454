"""torchvision models, untrained, at 32x32: every layer and its node count at defaults.

Expected widths are written from each architecture's definition (paper tables and torchvision's
configuration), not read back from the tracker.
"""

from __future__ import annotations

import math

import pytest
import torch
from zoo_expect import assert_layers, measure_quietly

torchvision = pytest.importorskip("torchvision")
models = torchvision.models

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def resnet_layers(blocks: list[int], bottleneck: bool) -> list[tuple[str, int]]:
    """Stem ReLU (64), then one layer per call of each block's shared `relu`.

    BasicBlock: relu(bn1(conv1)) and relu(out + identity), both `planes` wide.
    Bottleneck: `planes`, `planes`, then `4 * planes` after the residual sum.
    """
    expected = [("relu", 64)]
    for stage, (count, planes) in enumerate(zip(blocks, [64, 128, 256, 512]), start=1):
        for block in range(count):
            site = f"layer{stage}.{block}.relu"
            widths = [planes, planes, 4 * planes] if bottleneck else [planes, planes]
            expected += [(site if k == 0 else f"{site}-call{k + 1}", w) for k, w in enumerate(widths)]
    return expected


def test_resnet18():
    result = measure_quietly(models.resnet18(), IMAGES)
    expected = resnet_layers([2, 2, 2, 2], bottleneck=False)
    assert len(expected) == 17
    assert_layers(result, expected)


def test_resnet50():
    result = measure_quietly(models.resnet50(), IMAGES)
    expected = resnet_layers([3, 4, 6, 3], bottleneck=True)
    assert len(expected) == 49
    assert_layers(result, expected)


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding (the papers' reference code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def test_mobilenet_v3_small():
    # Howard et al. 2019, Table 2: (input, expanded, output, squeeze-and-excite) per bneck block.
    blocks = [
        (16, 16, 16, True), (16, 72, 24, False), (24, 88, 24, False), (24, 96, 40, True),
        (40, 240, 40, True), (40, 240, 40, True), (40, 120, 48, True), (48, 144, 48, True),
        (48, 288, 96, True), (96, 576, 96, True), (96, 576, 96, True),
    ]  # fmt: skip
    expected = [("features.0.2", 16)]  # stem conv 3x3, 16, hardswish
    for index, (inp, expanded, _, se) in enumerate(blocks, start=1):
        block = f"features.{index}.block"
        part = 0
        if expanded != inp:  # 1x1 expansion conv + activation
            expected.append((f"{block}.{part}.2", expanded))
            part += 1
        expected.append((f"{block}.{part}.2", expanded))  # depthwise conv + activation
        part += 1
        if se:  # squeeze (ReLU on expanded/4 rounded to 8) and excite (hardsigmoid on `expanded`)
            expected += [(f"{block}.{part}.activation", make_divisible(expanded / 4)),
                         (f"{block}.{part}.scale_activation", expanded)]  # fmt: skip
    expected += [("features.12.2", 576), ("classifier.1", 1024)]  # last 1x1 conv; Linear 1024 + hardswish
    assert len(expected) == 42
    assert_layers(measure_quietly(models.mobilenet_v3_small(), IMAGES), expected)


def test_efficientnet_b0():
    # Tan & Le 2019, Table 1: (expand ratio, input, output, repeats) per stage; stem 32, head 1280.
    stages = [(1, 32, 16, 1), (6, 16, 24, 2), (6, 24, 40, 2), (6, 40, 80, 3), (6, 80, 112, 3),
              (6, 112, 192, 4), (6, 192, 320, 1)]  # fmt: skip
    expected = [("features.0.2", 32)]
    for stage, (ratio, inp, out, repeats) in enumerate(stages, start=1):
        for block in range(repeats):
            channels = inp if block == 0 else out
            expanded = channels * ratio
            name = f"features.{stage}.{block}.block"
            part = 0
            if ratio != 1:
                expected.append((f"{name}.{part}.2", expanded))
                part += 1
            expected.append((f"{name}.{part}.2", expanded))  # depthwise conv + SiLU
            part += 1
            # squeeze-and-excite: SiLU on max(1, input // 4), sigmoid gate on the expanded channels
            expected += [(f"{name}.{part}.activation", max(1, channels // 4)),
                         (f"{name}.{part}.scale_activation", expanded)]  # fmt: skip
    expected.append(("features.8.2", 1280))
    assert len(expected) == 65
    assert_layers(measure_quietly(models.efficientnet_b0(), IMAGES), expected)


def test_densenet121():
    # Huang et al. 2017: growth 32, blocks (6, 12, 24, 16), bottleneck 4 * 32, transitions halve.
    growth, channels = 32, 64
    expected = [("features.relu0", 64)]
    for block, layers in enumerate([6, 12, 24, 16], start=1):
        for layer in range(1, layers + 1):
            prefix = f"features.denseblock{block}.denselayer{layer}"
            # relu1 sees every earlier feature map concatenated; relu2 the 1x1 bottleneck
            expected += [(f"{prefix}.relu1", channels + (layer - 1) * growth),
                         (f"{prefix}.relu2", 4 * growth)]  # fmt: skip
        channels += layers * growth
        if block < 4:
            expected.append((f"features.transition{block}.relu", channels))
            channels //= 2
    # The final BatchNorm's ReLU is a functional F.relu in DenseNet.forward.
    expected.append(("relu-fn", channels))
    assert channels == 1024 and len(expected) == 1 + 2 * 58 + 3 + 1
    assert_layers(measure_quietly(models.densenet121(), IMAGES), expected)


def test_convnext_tiny_channels_last_mlp_counts_features_not_rows():
    # Liu et al. 2022: depths (3, 3, 9, 3), dims (96, 192, 384, 768); the one GELU per block acts on
    # the channels-last (N, H, W, 4 * dim) output of a Linear: 4 * dim nodes, never the image rows.
    expected = []
    for stage, (depth, dim) in enumerate(zip([3, 3, 9, 3], [96, 192, 384, 768])):
        expected += [(f"features.{2 * stage + 1}.{block}.block.4", 4 * dim) for block in range(depth)]
    assert_layers(measure_quietly(models.convnext_tiny(), IMAGES), expected)


def test_small_vision_transformer_counts_features_not_tokens():
    model = models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=40, num_classes=10
    )
    tokens = (32 // 8) ** 2 + 1
    assert tokens == 17  # the count the first tracker mistook for nodes
    expected = [(f"encoder.layers.encoder_layer_{i}.mlp.1", 40) for i in range(3)]  # GELU of the MLP
    assert_layers(measure_quietly(model, IMAGES), expected)


def test_activity_of_a_reused_relu_equals_a_hand_computation():
    # layer1.0.relu-call2 is relu(bn2(conv2(...)) + identity): computed here by hand from the modules.
    model = models.resnet18().eval()
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(IMAGES))))
        block = model.layer1[0]
        first = torch.relu(block.bn1(block.conv1(stem)))
        second = torch.relu(block.bn2(block.conv2(first)) + stem)
    result = measure_quietly(model, IMAGES)
    for name, output in [("layer1.0.relu", first), ("layer1.0.relu-call2", second)]:
        layer = result.layers[result.names.index(name)]
        means = output.double().mean(dim=(0, 2, 3))
        assert torch.allclose(layer.activity, means, rtol=1e-5, atol=1e-6)
        assert layer.a == int((means > 0.05).sum())
    assert math.isfinite(float(result.layers[0].activity.sum()))
