"""Cost of an eval forward with the measurement window open vs closed, side by side in one process.

For each model (the issue's 6-block conv net: conv + BatchNorm + ReLU, 32x32 input, batch 128;
torchvision ResNet-18 at 32x32; nn.TransformerEncoder, 4 layers, d=128) and each statistic
(mean, fraction, max), times one eval forward without gradients with the window closed and with
an ``ActivityTracker`` window open, alternating, and prints the median ratio of the pairs.

    .venv/bin/python benchmarks/bench_measure_window.py --pairs 7 [--models convnet resnet18 transformer]

The models here are also used by bench_callback_overhead.py and gpu_check.py.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from emergence_lightning.measure import ActivityTracker

MODELS = ("convnet", "resnet18", "transformer")
STATISTICS = ("mean", "fraction", "max")


def convnet(widths: tuple[int, ...] = (64, 64, 128, 128, 256, 256), classes: int = 10) -> nn.Module:
    """The issue's 6-block conv net: conv + BatchNorm + ReLU per block, a pool after every second."""
    blocks: list[nn.Module] = []
    channels = 3
    for index, width in enumerate(widths):
        blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        if index % 2 == 1:
            blocks.append(nn.MaxPool2d(2))
        channels = width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def resnet18(classes: int = 10) -> nn.Module:
    from torchvision.models import resnet18 as build

    return build(num_classes=classes)


class Transformer(nn.Module):
    """Token embedding + nn.TransformerEncoder (functional ReLU inside each layer) + mean-pool head."""

    def __init__(self, d: int = 128, layers: int = 4, heads: int = 4, vocab: int = 1000, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def build(name: str, tiny: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """A model and one input batch (batch 128, or 4 when ``tiny``), seeded."""
    torch.manual_seed(0)
    batch = 4 if tiny else 128
    if name == "convnet":
        model = convnet((8, 8, 16, 16, 32, 32) if tiny else (64, 64, 128, 128, 256, 256))
        return model, torch.randn(batch, 3, 32, 32)
    if name == "resnet18":
        return resnet18(), torch.randn(batch, 3, 32, 32)
    if name == "transformer":
        model = Transformer(d=32 if tiny else 128, layers=2 if tiny else 4)
        return model, torch.randint(0, 1000, (batch, 16 if tiny else 64))
    raise ValueError(f"`model` must be one of {MODELS}, got {name!r}.")


def forward_seconds(model: nn.Module, x: torch.Tensor, tracker: ActivityTracker | None) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        if tracker is None:
            model(x)
        else:
            tracker.attach()
            try:
                tracker.start_pass()
                model(x)
            finally:
                tracker.detach()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--statistics", nargs="+", choices=STATISTICS, default=list(STATISTICS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: resists a busy machine)")
    args = parser.parse_args()
    if args.pairs < 5:
        parser.error(f"`--pairs` must be >= 5 for a median, got {args.pairs}.")
    torch.set_num_threads(args.threads)
    for name in args.models:
        model, x = build(name)
        model.eval()
        for statistic in args.statistics:
            tracker = ActivityTracker(model, statistic=statistic)
            forward_seconds(model, x, None), forward_seconds(model, x, tracker)  # warm-up
            closed, opened = [], []
            for _ in range(args.pairs):
                closed.append(forward_seconds(model, x, None))
                opened.append(forward_seconds(model, x, tracker))
            ratios = [o / c for o, c in zip(opened, closed)]
            measurement = tracker.compute()
            layers = len(measurement.n) if measurement else 0
            print(
                f"{name:<11} {statistic:<8} {layers:>3} layers: closed {1000 * statistics.median(closed):7.1f} ms, "
                f"open {1000 * statistics.median(opened):7.1f} ms; median ratio {statistics.median(ratios):.3f}x "
                f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.pairs} pairs)",
                flush=True,
            )


if __name__ == "__main__":
    main()
