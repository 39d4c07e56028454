"""Branches in parallel: train the parent once, then each branch as its own process, then merge.

The fork is saved (``<log-dir>/branches/fork.pt``) when the parent reaches it; with ``only=[]``
the parent's job trains no branch. Each branch is then one job, here a subprocess, on a cluster
one task of a SLURM array or one process per GPU::

    emergence-lightning branch <log-dir> --name pruned-50

``emergence-lightning branch <log-dir> --list`` shows each branch's status and rebuilds
``branches/summary.csv`` over all of them; ``emergence-lightning report <log-dir>`` draws them.
With ``--serial`` the same experiment trains every branch in one process instead (to compare)::

    python examples/parallel_branches.py [--log-dir runs/parallel] [--epochs-before 5] [--epochs-after 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from emergence_lightning.branching import pruned_name
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.paper.cli import main as cli
from emergence_lightning.paper.data import MNIST5kDataModule
from emergence_lightning.paper.models import PaperMLP


def train_parent(args: argparse.Namespace, only: list[str] | None) -> PruneAndBranchCallback:
    """The parent to the fork; then the branches ``only`` names (``[]``: none, ``None``: all)."""
    pl.seed_everything(args.seed, workers=True, verbose=False)
    branches = PruneAndBranchCallback(
        branch_epoch=args.epochs_before, amounts=args.amounts, seed=args.seed, only=only, verbose=False
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs_before + args.epochs_after,
        accelerator="cpu",
        devices=1,
        # Classes from importable modules (not this script): a branch job in another program unpickles them.
        logger=TensorBoardLogger(args.log_dir, name="", version=""),
        callbacks=[EmergenceCallback(), branches],
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        PaperMLP(lr=args.lr), datamodule=MNIST5kDataModule(batch_size=args.batch_size, seed=args.seed)
    )
    return branches


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-dir", default="runs/parallel")
    parser.add_argument("--epochs-before", type=int, default=5)
    parser.add_argument("--epochs-after", type=int, default=15)
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.5])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--limit-batches", type=float, default=1.0, help="fraction (or count, if > 1) of batches"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serial", action="store_true", help="every branch in this process (to compare)")
    parser.add_argument("--no-report", action="store_true", help="skip the figures")
    args = parser.parse_args()
    if args.limit_batches > 1:
        args.limit_batches = int(args.limit_batches)
    torch.set_num_threads(1)  # as the branch jobs below: one thread each

    if args.serial:
        print(train_parent(args, only=None).summary_table())
        return 0
    train_parent(args, only=[])  # trains the parent, saves the fork, trains no branch
    names = ["control", *(pruned_name(amount) for amount in args.amounts)]
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "emergence_lightning.paper.cli", "branch", args.log_dir, "--name", name]
        )
        for name in names
    ]  # all at once, as a cluster would run them
    failed = [name for name, job in zip(names, jobs) if job.wait() != 0]
    if failed:
        print(f"branch jobs failed: {failed}", file=sys.stderr)
        return 1
    cli(["branch", args.log_dir, "--list"])  # every branch finished; summary.csv merged over all of them
    return 0 if args.no_report else cli(["report", args.log_dir])


if __name__ == "__main__":
    sys.exit(main())
