"""What a prune-and-branch experiment is: every setting and data size that changes its numbers, checked on every process.

The record itself (fingerprints, differences, the id each result carries) is pure and lives in
:mod:`~emergence_lightning.branching.store`; this module reads what it needs from the parent's
Trainer and callbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from emergence_lightning.branching import store
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.trainer_arguments import processes_of, recorded_trainer_settings
from emergence_lightning.callbacks.trainer_factory import parent_settings


def experiment_settings(
    trainer: pl.Trainer, own: Mapping[str, Any], trainer_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The settings of ``experiment.json``: the PruneAndBranchCallback's (``own``), then two sections.

    ``emergence``: the parent's EmergenceCallback's (its copies measure every branch), through its
    public ``measurement_settings()``; ``trainer``: the branch Trainer's (the parent's settings with
    ``trainer_kwargs`` over them; see :func:`~.trainer_arguments.recorded_trainer_settings`).
    """
    emergence = next((cb for cb in trainer.callbacks if isinstance(cb, EmergenceCallback)), None)
    kwargs = {**parent_settings(trainer), **trainer_kwargs}
    return {
        **own,
        "emergence": emergence.measurement_settings() if emergence is not None else None,
        "trainer": recorded_trainer_settings(kwargs, processes_of(kwargs)),
    }


def fork_data_sizes(
    trainer: pl.Trainer, branch_datamodule: Any, branch_train_dataloaders: Any, branch_val_dataloaders: Any
) -> dict[str, Any]:
    """Samples and batch sizes of the data the branches train and validate on, at the fork."""
    if branch_datamodule is not None:
        return {"datamodule": type(branch_datamodule).__name__}  # its loaders exist once a branch trains
    if branch_train_dataloaders is not None:
        return store.data_sizes({"train": branch_train_dataloaders, "val": branch_val_dataloaders})
    return store.data_sizes({"train": trainer.train_dataloader, "val": trainer.val_dataloaders})


def check_experiment_everywhere(
    trainer: pl.Trainer, directory: Path, record: dict[str, Any], weights: bool
) -> None:
    """Raises, in every process, when ``directory`` holds another experiment's branches (rank zero reads).

    Raises:
        ExperimentMismatchError: naming the directory and each difference.
    """
    message = None
    if trainer.is_global_zero:
        try:
            store.check_experiment(directory, record, weights=weights)
        except store.ExperimentMismatchError as error:
            message = str(error)
    message = trainer.strategy.broadcast(message)
    if message is not None:
        raise store.ExperimentMismatchError(message)
