"""``emergence-lightning branch RUN_DIR --name pruned-50``: train branches from a saved fork, one job each.

A run whose ``PruneAndBranchCallback`` reached the fork saved it (``RUN_DIR/branches/fork.pt``);
each job trains the branches it names, beside the others' results, and the summary is rebuilt
over every finished branch. ``emergence-lightning report RUN_DIR`` then draws them all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

BRANCH_EXAMPLES = """examples:
  emergence-lightning branch runs/mlp-prune/seed-0 --name pruned-50
  emergence-lightning branch lightning_logs/version_0 --name control --name pruned-30 --accelerator gpu
  emergence-lightning branch runs/mlp-prune/seed-0 --list      # status; merges the summary

One job per branch (a SLURM array, one per GPU):
  NAMES=(control pruned-30 pruned-50 pruned-70)
  emergence-lightning branch RUN_DIR --name ${NAMES[$SLURM_ARRAY_TASK_ID]}
then, once all have ended:  emergence-lightning report RUN_DIR"""


def add_branch_command(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Adds the ``branch`` subcommand (``command(name, help, epilog)`` makes a subparser)."""
    branch = command(
        "branch", "train branches by name from a run's saved fork (one job per branch)", BRANCH_EXAMPLES
    )
    branch.add_argument("run_dir", help="the run whose branches/ holds fork.pt (or that branches folder)")
    branch.add_argument(
        "--name",
        action="append",
        default=None,
        metavar="BRANCH",
        help="a branch to train, e.g. pruned-50; repeat for several (default: every branch not finished yet)",
    )
    branch.add_argument("--accelerator", default=None, help="Lightning's accelerator (default: the parent's)")
    branch.add_argument("--devices", default=None, help="Lightning's devices (default: 1)")
    branch.add_argument(
        "--no-resume", action="store_true", help="train a named branch again even if it finished"
    )
    branch.add_argument(
        "--list",
        action="store_true",
        help="list the branches and their status and rebuild the summary over all of them; train nothing",
    )
    branch.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run_branch_command(args: Any) -> int:
    """Runs ``emergence-lightning branch``; returns the exit status (1 when a branch failed)."""
    from pathlib import Path

    import torch

    from emergence_lightning.branching import store
    from emergence_lightning.branching.lock import BranchLockedError
    from emergence_lightning.callbacks.branch_runner import run_saved_branches, saved_plan

    if args.threads < 1:
        print(f"error: `--threads` must be >= 1, got {args.threads}.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        if args.list:
            for name, status in saved_plan(Path(args.run_dir)):
                print(f"{name:>20}  {status}")
            return 0
        kwargs: dict[str, Any] = {}
        if args.accelerator is not None:
            kwargs["accelerator"] = args.accelerator
        if args.devices is not None:
            kwargs["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
        results = run_saved_branches(
            args.run_dir, args.name, trainer_kwargs=kwargs, resume=not args.no_resume
        )
    except (FileNotFoundError, ValueError, store.ExperimentMismatchError, BranchLockedError) as error:
        # A missing or corrupt fork, another experiment's folder, a branch another job holds: named, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not results:
        print("every branch of this fork has finished already; nothing to train")
    return 1 if any(result.status == "failed" for result in results) else 0
