"""The paper's networks as LightningModules: a multi-layer perceptron and a small CNN.

Both train with plain SGD at the paper's learning rate (0.005), return logits from ``forward``
and log ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc``
once per epoch. Every hidden activation is its own ``nn.ReLU`` module, so
``EmergenceCallback`` finds the layers by itself and no module runs twice in a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from emergence_lightning.measure.arguments import is_real


def _check_widths(name: str, widths: Sequence[int]) -> tuple[int, ...]:
    values = tuple(widths) if isinstance(widths, Iterable) and not isinstance(widths, str) else ()
    if not values or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in values):
        raise ValueError(f"`{name}` must be a non-empty sequence of positive integers, got {widths!r}.")
    return values


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = (
        tuple(input_shape) if isinstance(input_shape, Iterable) and not isinstance(input_shape, str) else ()
    )
    if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(f"`input_shape` must be three positive integers (C, H, W), got {input_shape!r}.")
    return shape  # type: ignore[return-value]


class _PaperClassifier(pl.LightningModule):
    """Training, evaluation, metrics and the optimiser shared by the paper's models.

    Subclasses build ``self.net``, an ``nn.Sequential`` from images to logits.
    """

    net: nn.Sequential

    def __init__(self, num_classes: int, lr: float, momentum: float) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
        if not is_real(lr) or not lr > 0:  # numpy floats too
            raise ValueError(f"`lr` must be positive, got {lr!r}.")
        if math.isinf(lr):
            raise ValueError(f"`lr` must be finite, got {lr!r}.")
        if not is_real(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}.")
        # "micro" averaging is plain accuracy (correct / total), what the paper reports.
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy(logits, y)
        # Epoch-level values: the paper's curves are per epoch, and one key per metric keeps names plain.
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=self.hparams["momentum"])


class PaperMLP(_PaperClassifier):
    """Multi-layer perceptron: ``Flatten -> (Linear -> ReLU) x len(hidden) -> Linear`` logits.

    The paper does not give its MLP's widths. Two hidden layers of 128 and 64 are the smallest
    common choice that gives emergence paths between hidden layers, and train on MNIST to about
    the paper's accuracies (90% after 5 epochs of SGD at 0.005) in seconds on a CPU.

    Args:
        input_shape: shape of one sample, ``(C, H, W)``.
        hidden: width of each hidden layer, in order.
        num_classes: number of output logits.
        lr: SGD learning rate (the paper's 0.005).
        momentum: SGD momentum (the paper uses none).

    Example:
        >>> model = PaperMLP()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (128, 64),
        num_classes: int = 10,
        lr: float = 0.005,
        momentum: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, lr=lr, momentum=momentum)
        channels, height, width = _check_input_shape(input_shape)
        widths = (channels * height * width, *_check_widths("hidden", hidden))
        self.save_hyperparameters()
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)


class PaperCNN(_PaperClassifier):
    """Small CNN: conv blocks, then a perceptron.

    ``(Conv3x3 -> ReLU -> MaxPool2) x len(channels) -> Flatten -> (Linear -> ReLU) x len(hidden) -> Linear``.

    Each convolution keeps the spatial size (padding 1) and each pooling halves it, so an input
    of ``H x W`` reaches the dense layers as ``channels[-1] x H/2^k x W/2^k`` (rounded down).

    Args:
        input_shape: shape of one sample, ``(1, 28, 28)`` for MNIST, ``(3, 32, 32)`` for CIFAR-10.
        channels: filters of each convolution block, in order.
        hidden: width of each dense hidden layer, in order.
        num_classes: number of output logits.
        lr: SGD learning rate (the paper's 0.005).
        momentum: SGD momentum (the paper uses none).

    Example:
        >>> model = PaperCNN(input_shape=(3, 32, 32))
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (16, 32),
        hidden: Sequence[int] = (64,),
        num_classes: int = 10,
        lr: float = 0.005,
        momentum: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, lr=lr, momentum=momentum)
        in_channels, height, width = _check_input_shape(input_shape)
        filters = (in_channels, *_check_widths("channels", channels))
        dense = _check_widths("hidden", hidden)
        blocks = len(filters) - 1
        if height >> blocks == 0 or width >> blocks == 0:
            raise ValueError(
                f"`input_shape` {tuple(input_shape)} is too small for {blocks} pooling blocks "
                f"(`channels`={tuple(channels)}): each block halves height and width."
            )
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for fan_in, fan_out in pairwise(filters):
            layers += [nn.Conv2d(fan_in, fan_out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        widths = (filters[-1] * (height >> blocks) * (width >> blocks), *dense)
        layers.append(nn.Flatten())
        for fan_in, fan_out in pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)
