"""Tiny models and data for tests: each is seconds to fit and shows one situation."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def blobs(
    samples: int = 96, features: int = 8, classes: int = 3, seed: int = 0, image: bool = False
) -> TensorDataset:
    """Separable Gaussian blobs, as vectors or as (1, 8, 8) images."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % classes
    centers = torch.randn(classes, features, generator=generator) * 2
    x = centers[labels] + torch.randn(samples, features, generator=generator)
    if image:
        x = x.reshape(samples, 1, 8, 8) if features == 64 else x.reshape(samples, 1, 1, features)
    return TensorDataset(x, labels)


def loaders(samples: int = 96, val_samples: int = 40, batch_size: int = 16, **kwargs):
    train = blobs(samples, seed=0, **kwargs)
    val = blobs(val_samples, seed=1, **kwargs)
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=batch_size)


class Classifier(pl.LightningModule):
    """Wraps any `net` with cross-entropy training, logging val_acc."""

    def __init__(self, net: nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def quiet_trainer(root, callbacks: list, max_epochs: int) -> pl.Trainer:
    """A deterministic CPU Trainer logging to TensorBoard in ``root``, with no checkpoint, bar or summary."""
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name="", version=""),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )


def mlp(features: int = 8, hidden: tuple[int, ...] = (16, 12), classes: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def cnn(classes: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, classes),
    )  # fmt: skip


class SharedReLU(nn.Module):
    """One ReLU module used after both hidden layers: a modelling trap the tracker reports."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


class FunctionalReLU(nn.Module):
    """Calls torch.relu functionally: no activation module to discover."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.out = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(x)))


class DefinedOutOfOrder(nn.Module):
    """Defines the second activation before the first: forward order must win."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Tanh()
        self.fc1, self.fc2, self.out = nn.Linear(8, 5), nn.Linear(5, 4), nn.Linear(4, 3)
        self.early = nn.ReLU()

    def forward(self, x):
        return self.out(self.late(self.fc2(self.early(self.fc1(x)))))
