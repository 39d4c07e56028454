"""A small real run for the dashboard tests: a parent MLP on MNIST 5k, forked into two branches."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from emergence_lightning import EmergenceCallback, PruneAndBranchCallback
from emergence_lightning.paper.data import MNIST5kDataModule
from emergence_lightning.paper.models import PaperMLP

HIDDEN = (32, 16)
BRANCHES = ("control", "pruned-50", "pruned-80")


def make_dashboard_run(root: Path) -> Path:
    """Fit, fork after epoch 3 and train each branch to epoch 5; returns the parent's log folder."""
    pl.seed_everything(0, workers=True, verbose=False)
    trainer = pl.Trainer(
        max_epochs=5, limit_train_batches=15, limit_val_batches=4,
        # Lightning's default logger (default_hp_metric=True), as a user creates it.
        logger=TensorBoardLogger(str(root), name="mlp", version="seed-0"),
        callbacks=[
            EmergenceCallback(), PruneAndBranchCallback(branch_epoch=3, amounts=(0.5, 0.8), verbose=False),
        ],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=True,
    )  # fmt: skip
    trainer.fit(PaperMLP(hidden=HIDDEN, lr=0.05), datamodule=MNIST5kDataModule(batch_size=64))
    return Path(trainer.logger.log_dir)
