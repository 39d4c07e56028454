"""What EmergenceCallback reads from a running Trainer: data loaders, epochs, steps, samplers.

The one read of a Lightning internal (the step epoch-end values are logged at, with no public
accessor) goes through :mod:`emergence_lightning._compat`, which fails naming it on a Lightning
version that moved it (tests/test_compat.py, tests/callbacks/test_emergence_schedules.py exercise it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DistributedSampler

from emergence_lightning import _compat


def validation_enabled(trainer: pl.Trainer) -> bool:
    """Whether this fit will run validation at all (a loader, a ``validation_step``, ``limit_val_batches > 0``)."""
    return bool(trainer.enable_validation)


def load_validation_data(trainer: pl.Trainer) -> None:
    """Loads the validation dataloaders now, as the sanity check would (no-op once loaded).

    Without a sanity check (``num_sanity_val_steps=0``, ``check_val_every_n_epoch > 1``) they are
    loaded only at the first validation run, after ``on_train_start``; the epoch-0 pass needs them.
    """
    if trainer.val_dataloaders is None:
        trainer.fit_loop.epoch_loop.val_loop.setup_data()


def has_validation_batches(trainer: pl.Trainer) -> bool:
    return trainer.val_dataloaders is not None and sum(trainer.num_val_batches or [0]) > 0


def runs_validation(trainer: pl.Trainer) -> bool:
    """Whether validation runs with at least one batch (else per-epoch metrics come from training)."""
    return bool(trainer.enable_validation and sum(trainer.num_val_batches or [0]) > 0)


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning writes epoch-end ``self.log`` values at (batches that stepped; = global_step
    with one optimizer), so values written straight to the loggers sit beside them.
    """
    return int(_compat.batches_that_stepped(trainer))


def epochs_completed(
    trainer: pl.Trainer, *, ended: bool = False, epoch_over: bool = False, batch_over: bool = False
) -> float:
    """Training epochs completed, fractional mid-epoch (a validation run inside it, a fit cut by ``max_steps``).

    Args:
        trainer: the running Trainer.
        ended: called after the fit loop ended (``on_train_end``), where ``current_epoch`` already
            counts the last, possibly partial, epoch.
        epoch_over: the epoch has ended (``on_train_epoch_end``): it counts whole unless ``max_steps``
            cut it (an epoch ended early by ``on_train_batch_start`` returning -1 counts whole).
        batch_over: called in ``on_train_batch_end``, before Lightning counts that batch as completed.
    """
    if trainer.state.fn != "fit":
        return trainer.current_epoch
    total = trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed + int(batch_over)
    base = trainer.current_epoch - 1 if ended else trainer.current_epoch
    cut = 0 < trainer.max_steps <= trainer.global_step
    if (ended or epoch_over) and not cut:
        return base + 1
    if not total or math.isinf(total) or done >= total or done == 0:
        return base + 1
    return round(base + done / total, 4)


def total_over_processes(trainer: pl.Trainer, count: int) -> int:
    """``count`` summed over the processes."""
    if trainer.world_size == 1:
        return count
    return int(
        trainer.strategy.reduce(
            torch.tensor(float(count), device=trainer.strategy.root_device), reduce_op="sum"
        )
    )


def length(loader: Any) -> int | None:
    """``len(loader)``, or None when it has none (an iterable dataset)."""
    try:
        return len(loader)
    except (TypeError, NotImplementedError):
        return None


def first(loaders: Any) -> Any:
    """The first of several dataloaders (list, tuple or dict), or the one given."""
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


def take(loader: Iterable[Any] | None, limit: float) -> Iterator[Any]:
    """The first ``limit`` batches of ``loader``."""
    if loader is None:
        return
    for index, batch in enumerate(loader):
        if index >= limit:
            break
        yield batch


def sampler_of(loader: Any) -> Any:
    return getattr(loader, "sampler", None)


def real_samples_on_this_rank(sampler: Any) -> int | None:
    """Samples of this rank that are not padding added by a DistributedSampler, or None for no limit."""
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    size = len(sampler.dataset)  # type: ignore[arg-type]
    # The sampler hands out positions rank, rank + R, ...; positions >= size repeat earlier samples.
    return max(0, math.ceil((size - sampler.rank) / sampler.num_replicas))


def measurement_source(trainer: pl.Trainer, probe_dataloader: Any) -> str:
    """Where the callback measures: ``"probe"`` data, the ``"validation"`` passes, else ``"train"``."""
    if probe_dataloader is not None:
        return "probe"
    if not validation_enabled(trainer):
        return "train"  # no validation loop at all (none given, or `limit_val_batches=0`)
    load_validation_data(trainer)
    return "validation" if has_validation_batches(trainer) else "train"


def start_data(trainer: pl.Trainer, source: str | None, probe_dataloader: Any) -> tuple[Any, float]:
    """The loader of the epoch-0 pass (the same data later epochs measure) and how many of its batches to take."""
    if source == "probe":
        return probe_dataloader, math.inf
    if source == "validation":
        return first(trainer.val_dataloaders), trainer.num_val_batches[0]
    return first(trainer.train_dataloader), trainer.num_training_batches
