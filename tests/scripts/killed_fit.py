"""Fits a tiny MLP with EmergenceCallback and checkpoints, and can SIGKILL itself part-way.

Run by tests/callbacks/test_robustness.py as a real process, so the kill is a real one: no ``finally``, no
``on_exception``, no logger finalisation.

    python killed_fit.py --root DIR --max-epochs 4 --kill-at-epoch 2   # dies when epoch 2 starts
    python killed_fit.py --root DIR --max-epochs 4 --resume             # continues from last.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tiny_models import Classifier, loaders, mlp  # noqa: E402

from emergence_lightning import EmergenceCallback  # noqa: E402


class KillAtEpochStart(pl.Callback):
    """SIGKILLs this process as epoch ``epoch`` (0-based) starts: ``epoch`` epochs are done and saved."""

    def __init__(self, epoch: int, marker: Path) -> None:
        self.epoch = epoch
        self.marker = marker

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            self.marker.write_text(str(trainer.current_epoch))
            os.kill(os.getpid(), signal.SIGKILL)


def fit(
    root: Path, max_epochs: int = 4, kill_at_epoch: int | None = None, resume: bool = False
) -> EmergenceCallback:
    """One fit (or the resumed rest of one) under ``root``; writes the callback's history to history.json."""
    pl.seed_everything(0, verbose=False)
    net = mlp(hidden=(16, 12))
    with torch.no_grad():
        net[0].bias[:6] = -2.0  # some dead nodes, so E > 0
    model = Classifier(net, lr=0.5)
    train, val = loaders(samples=64, val_samples=32, batch_size=16)
    emergence = EmergenceCallback()
    callbacks: list[pl.Callback] = [
        emergence,
        ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=-1, every_n_epochs=1),
    ]
    if kill_at_epoch is not None:
        callbacks.append(KillAtEpochStart(kill_at_epoch, root / "killed-at-epoch"))
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name="run", version=0),  # one run directory across restarts
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val, ckpt_path=str(root / "checkpoints" / "last.ckpt") if resume else None)
    record = {"history": [entry.to_dict() for entry in emergence.history], "state_key": emergence.state_key}
    (root / "history.json").write_text(json.dumps(record))
    return emergence


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--kill-at-epoch", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    fit(Path(args.root), args.max_epochs, args.kill_at_epoch, args.resume)


if __name__ == "__main__":
    main()
