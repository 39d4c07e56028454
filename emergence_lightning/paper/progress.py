"""One line per epoch and per run (the parent, then each branch) for long runs off a terminal.

Lightning's progress bar redraws one line in place: in a log file or CI output it is noise, and
without it a ``reproduce`` run of an hour says nothing until it ends. :class:`EpochLines` prints
what a researcher checks on the way::

    mlp-prune/seed-0 parent     epoch  2/4  val_acc 0.806  E 742  4 s
    mlp-prune/seed-0 pruned-30  epoch  3/4  val_acc 0.859  E 648  3 s

``PruneAndBranchCallback`` gives every branch its own copy; the copy names its run from the
branch's log folder (``branches/<name>``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from emergence_lightning.callbacks.prune_and_branch import PARENT


def run_name(trainer: pl.Trainer) -> str:
    """``parent`` for the run that forks, the branch's name for a branch (its log folder's name)."""
    log_dir = trainer.log_dir
    if log_dir is not None and Path(log_dir).parent.name == "branches":
        return Path(log_dir).name
    return PARENT


def _number(value: Any) -> str:
    value = float(value)
    return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"


class EpochLines(Callback):
    """Prints one line after each training epoch: run, epoch, the monitored metric and E, elapsed time.

    Args:
        label: what the lines start with, e.g. ``mlp-prune/seed-0``.
        metrics: keys of ``trainer.callback_metrics`` to show, when logged.
        stream: where the lines go (standard error by default, beside Lightning's messages).
    """

    def __init__(
        self,
        label: str = "",
        metrics: tuple[str, ...] = ("val_acc", "emergence/E"),
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.metrics = tuple(metrics)
        self.stream = stream
        self._started: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        parts = [f"{self.label} " if self.label else "", f"{run_name(trainer):<10} "]
        parts.append(f"epoch {trainer.current_epoch + 1:>2}/{trainer.max_epochs}")
        for key in self.metrics:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                parts.append(f"  {key.rsplit('/', 1)[-1]} {_number(value)}")
        if self._started is not None:
            parts.append(f"  {time.perf_counter() - self._started:.0f} s")
        stream = self.stream or sys.stderr
        print("".join(parts), file=stream, flush=True)

    def __deepcopy__(self, memo: dict[int, Any]) -> EpochLines:
        # A stream cannot be deep-copied; every copy (one per branch) writes to the same one.
        copied = EpochLines(self.label, self.metrics, self.stream)
        memo[id(self)] = copied
        return copied
