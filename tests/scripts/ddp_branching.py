"""Fits a tiny model with PruneAndBranchCallback on N CPU processes (DDP, gloo) and writes what each rank saw.

Run by tests/callbacks/test_prune_and_branch.py as a real script, because Lightning's DDP launcher starts
the other processes by running this file again.

    python ddp_branching.py --devices 2 --out DIR
"""

import argparse
import json
import os
import sys
from typing import ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tiny_models import Classifier, loaders, mlp
from torch.nn.parallel import DistributedDataParallel

from emergence_lightning.branching import effective_weights_zero_where_masked, fingerprint, masks
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback


class BranchProbe(pl.Callback):
    """In every fit (parent and branches, which get copies): how it ran, and the weights it ended with."""

    seen: ClassVar[list] = []  # a class attribute: shared by the copies the branches get

    def on_train_end(self, trainer, pl_module):
        BranchProbe.seen.append(
            {
                "log_dir": trainer.log_dir,
                "world_size": trainer.world_size,
                "strategy": type(trainer.strategy).__name__,
                "ddp_wrapped": isinstance(trainer.model, DistributedDataParallel),
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "weights": fingerprint(pl_module.state_dict()),
                "masked_entries_zero": effective_weights_zero_where_masked(pl_module),
                "masked_entries": sum(int((m == 0).sum()) for m in masks(pl_module).values()),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    train, val = loaders(samples=64, val_samples=32, batch_size=8)
    model = Classifier(mlp(hidden=(16, 12)), lr=0.1)
    branches = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False)
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=TensorBoardLogger(args.out, name="", version=""),
        callbacks=[EmergenceCallback(), BranchProbe(), branches],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train, val)
    # Every rank reports; rank zero alone wrote the files.
    report = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "initialized": torch.distributed.is_initialized(),
        "results": [
            {
                k: r.get(k)
                for k in ("name", "status", "error", "parameters", "epochs", "E_fork", "E_end", "final")
            }
            for r in branches.results
        ],
        "fork_fingerprint": branches.fork.fingerprint if branches.fork else None,
        "fits": BranchProbe.seen,
    }
    with open(os.path.join(args.out, f"rank-{trainer.global_rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
