"""BranchRecorder: the callback inside one branch's Trainer.

It loads the parent's training state at the fork, takes the fork measurement through
:meth:`EmergenceCallback.measure_now` (a typed :class:`EmergenceRecord`), follows the monitored
metric, catches a non-finite loss, and logs the
branch's HParams row. It talks to ``PruneAndBranchCallback`` only through its constructor
arguments and :meth:`summary`.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from emergence_lightning.branching.fork_state import (
    DataOrder,
    ForkPoint,
    ForkState,
    load_optimizer,
    load_schedulers,
    restore_rng,
)
from emergence_lightning.branching.monitor import metric_figures
from emergence_lightning.branching.plan import BranchSpec
from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.emergence_record import EmergenceRecord
from emergence_lightning.callbacks.tensorboard_views import run_hparams, summary_metrics, write_run_summary
from emergence_lightning.pruning import count_parameters, masks


class BranchRecorder(Callback):
    """Inside one branch: loads the fork state, measures E at the fork, follows ``monitor``.

    Args:
        spec: the branch.
        fork: where the parent stopped.
        fork_state: the parent's optimizer, scheduler and RNG state to continue, or None (fresh).
        monitor: the metric to follow; ``mode``: ``"max"`` or ``"min"``.
        pruning_fn: recorded in the HParams row.
        emergence_callback: the branch's own copy of the parent's EmergenceCallback, if any.
        started: ``time.perf_counter()`` when the branch began (for ``setup_s``).
        order: the dataloaders' generators at the fork, set again as the branch starts training.
    """

    def __init__(
        self,
        spec: BranchSpec,
        fork: ForkPoint,
        fork_state: ForkState | None,
        monitor: str | None,
        mode: str,
        pruning_fn: str,
        emergence_callback: EmergenceCallback | None,
        started: float,
        order: DataOrder | None = None,
    ) -> None:
        self.spec = spec
        self.fork = fork
        self.fork_state = fork_state
        self.monitor = monitor
        self.mode = mode
        self.pruning_fn = pruning_fn
        self.emergence_callback = emergence_callback
        self.started = started
        self.order = order
        self.values: dict[int, float] = {}  # epochs completed -> monitored value
        self.fork_record: EmergenceRecord | None = None
        self.train_started: float | None = None
        self.final_epoch: int | None = None
        self._nonfinite: Tensor | None = None
        self._summary_logged = False

    @property
    @override
    def state_key(self) -> str:
        return f"BranchRecorder[{self.spec.name}]"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_started = time.perf_counter()
        _check_optimized_tensors(trainer, pl_module)
        if self.fork_state is not None:
            _load_fork_state(trainer, pl_module, self.fork_state)
        if self.emergence_callback is not None:
            # In place of the callback's "before training" pass (off in branches): a trained model, at the fork.
            self.fork_record = self.emergence_callback.measure_now(
                trainer, pl_module, epoch=trainer.current_epoch, before_training=False, log=True
            )
        # Last, after the fork measurement and the iterator Lightning's `setup_data` started (one more than the
        # unforked run starts): the first batch draws exactly as the unforked run's would.
        if self.order is not None:
            self.order.restore(trainer.train_dataloader)
        if self.fork_state is not None:
            restore_rng(self.fork_state.rng)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            # Accumulated on the device: no host sync per step; checked once per epoch.
            bad = ~torch.isfinite(loss.detach()).all()
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not state.runs_validation(trainer):
            self._record(trainer)
        bad = bool(self._nonfinite) if self._nonfinite is not None else False
        self._nonfinite = None
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise FloatingPointError(
                f"the training loss was NaN or infinite during epoch {trainer.current_epoch + 1} "
                f"(step {trainer.global_step})"
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_summary(trainer, "finished")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._log_summary(trainer, "failed")

    def _record(self, trainer: pl.Trainer) -> None:
        value = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if value is not None:
            self.values[trainer.current_epoch + 1] = float(value)
        self.final_epoch = trainer.current_epoch + 1

    def summary(self) -> dict[str, Any]:
        """The branch's figures for the results table (see ``SUMMARY_COLUMNS``), plus its ``history``."""
        epochs = sorted(self.values)
        values = [self.values[e] for e in epochs]
        records = self.emergence_callback.records() if self.emergence_callback is not None else []
        fork, end = self.fork_record, (records[-1] if records else None)
        return {
            "E_fork": fork.E if fork else None,
            "relative_E_fork": fork.relative if fork else None,
            "log10_E_fork": fork.log10_E if fork else None,
            "E_end": end.E if end else None,
            "relative_E_end": end.relative if end else None,
            "log10_E_end": end.log10_E if end else None,
            # Path-exact E on the weights' graph (pruned weights are no edge): connectivity="weights" only.
            "E_path_fork": fork.E_path if fork else None,
            "relative_E_path_fork": fork.relative_path if fork else None,
            "E_path_end": end.E_path if end else None,
            "relative_E_path_end": end.relative_path if end else None,
            **metric_figures(self.values, self.mode),
            "epochs": (self.final_epoch - self.fork.epoch) if self.final_epoch is not None else 0,
            "setup_s": round(self.train_started - self.started, 3)
            if self.train_started is not None
            else None,
            "history": {
                "epoch": epochs,
                "value": values,
                "E": [[r.epoch, r.E] for r in records],
                "relative_E": [[r.epoch, r.relative] for r in records],
            },
        }

    def _log_summary(self, trainer: pl.Trainer, status: str) -> None:
        """The branch's hyperparameters and final figures, for TensorBoard's hparams table (rank zero)."""
        if self._summary_logged or not trainer.is_global_zero:
            return
        self._summary_logged = True
        summary = self.summary()
        figures = {**summary, "parameters": count_parameters(trainer.lightning_module)}
        path_exact = self.emergence_callback is not None and self.emergence_callback.connectivity == "weights"
        # Every branch of the run has these keys (NaN where unknown, e.g. a model that could not be traced).
        params = run_hparams(self.spec.name, self.spec.amount, self.fork.epoch, self.pruning_fn, status)
        # A failing logger gets a warning: the summary must not hide the branch's own error.
        metrics = summary_metrics(self.monitor, figures, path_exact)
        write_run_summary(trainer.loggers, trainer.global_step, params, metrics)


def _load_fork_state(trainer: pl.Trainer, pl_module: pl.LightningModule, fork_state: ForkState) -> None:
    """Loads the parent's optimizer and LR scheduler state into the branch's (pruned entries' state zeroed)."""
    if len(trainer.optimizers) != len(fork_state.optimizers):
        raise ValueError(
            f"The branch's `configure_optimizers` returned {len(trainer.optimizers)} optimizer(s), the parent's "
            f"{len(fork_state.optimizers)}; pass `optimizer_state='fresh'` to start the branches afresh."
        )
    mask_by_name = masks(pl_module)
    for optimizer, saved in zip(trainer.optimizers, fork_state.optimizers):
        load_optimizer(optimizer, saved, pl_module, mask_by_name)
    load_schedulers([config.scheduler for config in trainer.lr_scheduler_configs], fork_state.schedulers)


def _check_optimized_tensors(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """A pruned ``weight`` is recomputed from ``weight_orig`` every pass: optimizing it trains nothing."""
    parameters = {id(parameter) for parameter in pl_module.parameters()}
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            if any(id(tensor) not in parameters for tensor in group["params"]):
                raise RuntimeError(
                    "`configure_optimizers` hands the optimizer tensors that are not parameters of the pruned "
                    "model: pruning replaces a module's `weight` parameter by `weight_orig` (times `weight_mask`). "
                    "Build the optimizer from `self.parameters()` (or `named_parameters()`)."
                )
