"""What EmergenceCallback sends to Lightning's loggers and to TensorBoard.

Each measurement reaches every logger as one record (:func:`log_record`); one taken in a Lightning
loop's epoch end also gives the monitorable scalars to ``pl_module.log`` (:func:`log_measurement`),
where ``EarlyStopping`` and ``ModelCheckpoint`` read them. The callback's settings go to every logger's
hyperparameters, and TensorBoard gets its custom-scalars charts (:func:`write_run_start`,
:func:`write_layout`). The keys and values come from :mod:`~emergence_lightning.callbacks.emergence_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from emergence_lightning.callbacks import emergence_lifecycle as lifecycle
from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.callbacks.emergence_metrics import measurement_row, scalar_metrics
from emergence_lightning.callbacks.emergence_record import EmergenceRecord
from emergence_lightning.callbacks.loggers import log_settings
from emergence_lightning.callbacks.tensorboard_views import (
    emergence_layout,
    tensorboard_loggers,
    write_custom_scalars,
)


def log_measurement(
    trainer: pl.Trainer, pl_module: pl.LightningModule, record: EmergenceRecord, prefix: str
) -> None:
    """A measurement taken in a validation or training epoch end: the monitorable scalars to ``pl_module.log``,
    the whole record to the loggers at the step Lightning writes its epoch-end values at.
    """
    # `self.log` only for the monitorable scalars, which EarlyStopping and ModelCheckpoint read, and
    # with `logger=False`: the loggers get the whole measurement as one record, at the step Lightning
    # writes its epoch-end values at (per-layer `self.log` calls would cost ~0.6 ms a layer).
    value: float | torch.Tensor
    for key, value in scalar_metrics(record, prefix).items():
        if not key.endswith(("/epoch", "active_fraction")) and pl_module.device.type != "mps":
            # float64: E and E~ pass float32's range (inf) on real CNNs, and float32 would round
            # log10 E (82.8 on mobilenet_v3_small) to 1e-5, hiding changes a monitor must see.
            value = torch.tensor(value, dtype=torch.float64, device=pl_module.device)
        # Values are equal on every process; syncing keeps them so and silences the DDP warning.
        pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True, logger=False)
    log_record(trainer, record, prefix, state.logging_step(trainer))


def log_record(trainer: pl.Trainer, record: EmergenceRecord, prefix: str, step: int | None = None) -> None:
    """Writes a measurement to every logger as one record: one ``log_metrics`` call each (a CSV row, a
    W&B history step, one MLflow batch) holding E, log10 E, Ẽ, the active fraction, every per-layer
    count and ``epoch``, at ``step`` (default ``global_step``: before the first step, in
    ``on_train_end``, mid-epoch, or for a measurement the caller asked for).
    """
    if trainer.loggers:  # with none, the row of 2,000 keys at 1,000 layers would be built for nothing
        metrics = measurement_row(record, prefix, epoch=trainer.current_epoch)
        _write(trainer, metrics, trainer.global_step if step is None else step)


def settings_hparams(settings: Mapping[str, Any], prefix: str, source_known: bool) -> dict[str, Any]:
    """The callback's ``settings`` as hyperparameters ``{prefix}/<name>``; the source only once known."""
    settings = dict(settings)
    if not source_known:
        del settings["source"]  # known from `on_train_start` on
    return {f"{prefix}/{key}": lifecycle.hparam_value(value) for key, value in settings.items()}


@rank_zero_only
def write_run_start(trainer: pl.Trainer, prefix: str, path_exact: bool, hparams: dict[str, Any]) -> None:
    """At the start of training: the charts of every quantity, and the settings to every logger."""
    # Per-layer charts once the layers are known (the first measurement of this run).
    write_layout(trainer, prefix, path_exact, layers=None)
    # Every logger's hyperparameters, now with the measurement's source.
    log_settings(trainer.loggers, hparams)


@rank_zero_only
def write_layout(trainer: pl.Trainer, prefix: str, path_exact: bool, layers: dict[str, int] | None) -> None:
    """Custom-scalars charts; with ``layers`` (known after the first measurement) one chart per layer."""
    if tensorboard_loggers(trainer.loggers):  # the charts of 1,000 layers cost ms to build: only for a viewer
        write_custom_scalars(trainer.loggers, emergence_layout(prefix, path_exact=path_exact, layers=layers))


@rank_zero_only
def _write(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """One ``log_metrics`` call per logger (rank zero writes, as Lightning's loggers do)."""
    if metrics:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
