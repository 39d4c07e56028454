"""Fits a tiny MLP with PruneAndBranchCallback; can SIGKILL itself while a given branch trains.

Run by tests/callbacks/test_robustness.py as a real process. The logger has a fixed version, so a rerun
finds the branches a killed run finished.

    python killed_branches.py --root DIR --kill-in pruned-30   # dies in pruned-30's first epoch
    python killed_branches.py --root DIR                        # the rerun: trains what is missing
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tiny_models import Classifier, loaders, mlp  # noqa: E402

from emergence_lightning import EmergenceCallback, PruneAndBranchCallback  # noqa: E402


class FitLog(pl.Callback):
    """Appends the run directory of every fit that starts training (the parent and each branch) to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module):
        with self.path.open("a") as handle:
            handle.write(Path(trainer.log_dir).name + "\n")


class KillInBranch(pl.Callback):
    """Branches get deep copies of this; the one running in branch ``name`` SIGKILLs the process mid-epoch."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if Path(trainer.log_dir).name == self.name and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--kill-in", default=None)
    args = parser.parse_args()
    root = Path(args.root)

    pl.seed_everything(0, verbose=False)
    model = Classifier(mlp(hidden=(16, 12)), lr=0.1)
    train, val = loaders(samples=96, val_samples=32, batch_size=16)
    branches = PruneAndBranchCallback(branch_epoch=1, amounts=(0.3, 0.5), verbose=False)
    callbacks = [EmergenceCallback(), FitLog(root / "fits.txt")]
    if args.kill_in:
        callbacks.append(KillInBranch(args.kill_in))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root / "runs"), name="", version=""),  # a stable log directory
        callbacks=[*callbacks, branches],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    keys = ("name", "status", "resumed", "E_end")
    (root / "results.json").write_text(json.dumps([{k: r.get(k) for k in keys} for r in branches.results]))


if __name__ == "__main__":
    main()
