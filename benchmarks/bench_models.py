"""Models, data and timing marks shared by the benchmarks (not a benchmark itself).

The models of issue 9's speed figures: a 6-block conv net (conv + BatchNorm + ReLU per block,
32x32 input), torchvision ResNet-18 at 32x32, and a small ``nn.TransformerEncoder`` (its ReLU is a
functional call inside each layer, so it exercises the interception). Data are seeded random
tensors of CIFAR shape (or token ids): timing does not depend on what the pixels show.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

MODELS = ("convnet", "resnet18", "transformer")
ISSUE_WIDTHS = (64, 64, 128, 128, 256, 256)


def load() -> str:
    """The machine's load average (1, 5, 15 min), printed beside every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def convnet(widths: tuple[int, ...] = ISSUE_WIDTHS, classes: int = 10) -> nn.Module:
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

    def __init__(
        self, d: int = 128, layers: int = 4, heads: int = 4, vocab: int = 1000, classes: int = 10
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(1))


@dataclass(frozen=True)
class Size:
    """One model's size for a benchmark: architecture knobs and data."""

    widths: tuple[int, ...] = ISSUE_WIDTHS  # conv net only
    d: int = 128  # transformer only
    layers: int = 4  # transformer only
    tokens: int = 64  # transformer sequence length
    batch: int = 128


# Forward-pass benchmarks: the sizes of the issue (batch 128).
WINDOW_SIZES = {"convnet": Size(), "resnet18": Size(), "transformer": Size()}
# Whole fits on a shared 2-core CPU: narrower conv net (1/16 of the FLOPs; the per-element cost
# of measuring is then a larger share, so its overhead reads high, not low) and a smaller transformer.
FIT_SIZES = {
    "convnet": Size(widths=(16, 16, 32, 32, 64, 64), batch=64),
    "resnet18": Size(batch=64),
    "transformer": Size(d=64, layers=2, tokens=32, batch=64),
}
TINY = Size(widths=(4, 4, 8, 8, 8, 8), d=16, layers=2, tokens=8, batch=4)


def build(name: str, size: Size) -> nn.Module:
    """A seeded, untrained model."""
    torch.manual_seed(0)
    if name == "convnet":
        return convnet(size.widths)
    if name == "resnet18":
        return resnet18()
    if name == "transformer":
        return Transformer(d=size.d, layers=size.layers, heads=4 if size.d >= 16 else 1)
    raise ValueError(f"`model` must be one of {MODELS}, got {name!r}.")


def inputs(name: str, size: Size, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` seeded inputs: 3x32x32 images, or token ids for the transformer."""
    generator = torch.Generator().manual_seed(seed)
    if name == "transformer":
        return torch.randint(0, 1000, (count, size.tokens), generator=generator)
    return torch.randn(count, 3, 32, 32, generator=generator)


def loaders(name: str, size: Size, train: int, val: int) -> tuple[DataLoader, DataLoader]:
    """Seeded training and validation loaders of random inputs and labels."""
    generator = torch.Generator().manual_seed(1)
    train_set = TensorDataset(
        inputs(name, size, train, 1), torch.randint(0, 10, (train,), generator=generator)
    )
    val_set = TensorDataset(inputs(name, size, val, 2), torch.randint(0, 10, (val,), generator=generator))
    return (
        DataLoader(
            train_set, batch_size=size.batch, shuffle=True, generator=torch.Generator().manual_seed(3)
        ),
        DataLoader(val_set, batch_size=size.batch),
    )


class Classifier(pl.LightningModule):
    """A LightningModule around one of the models: cross-entropy, SGD, validation loss logged."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Marks(Callback):
    """Clock readings at Lightning hooks. Put a ``FirstMarks`` first and a ``LastMarks`` last in the
    callbacks, and the spans between them hold every other callback's work in those hooks.
    """

    def __init__(self) -> None:
        self.times: dict[str, list[tuple[float, float]]] = {}

    def _mark(self, hook: str) -> None:
        self.times.setdefault(hook, []).append((time.perf_counter(), time.process_time()))

    def on_train_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self._mark("train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._mark("train_batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._mark("train_batch_end")

    def on_validation_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self._mark("validation_start")

    def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self._mark("validation_end")


class FirstMarks(Marks):
    pass


class LastMarks(Marks):
    pass


def span(first: Marks, last: Marks, start: str, end: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds summed over the (start in ``first``, end in ``last``) hook pairs."""
    starts, ends = first.times.get(start, []), last.times.get(end, [])
    if len(starts) != len(ends):
        raise RuntimeError(f"{len(starts)} `{start}` marks but {len(ends)} `{end}` marks")
    wall = sum(e[0] - s[0] for s, e in zip(starts, ends))
    return wall, sum(e[1] - s[1] for s, e in zip(starts, ends))
