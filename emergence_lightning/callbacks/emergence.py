"""EmergenceCallback: measure emergence each epoch, log it, and optionally stop at zero."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.callbacks.emergence_checks import (
    check_callback_arguments,
    duplicate_prefix_error,
    layer_coverage_warnings,
)
from emergence_lightning.callbacks.emergence_metrics import (
    all_metrics,
    layer_metrics,
    scalar_metrics,
    zero_streak,
)
from emergence_lightning.callbacks.emergence_record import EmergenceRecord
from emergence_lightning.callbacks.path_exact import PathExactCounter
from emergence_lightning.callbacks.probe import ProbeStep, batch_input, default_probe_step, run_step
from emergence_lightning.callbacks.tensorboard_views import (
    emergence_layout,
    write_activity_histograms,
    write_custom_scalars,
)
from emergence_lightning.functional import (
    emergence,
    log10_emergence,
    relative_emergence,
)
from emergence_lightning.measure import ActivityTracker, Measurement
from emergence_lightning.pruning import count_parameters

__all__ = ["EmergenceCallback", "batch_input", "default_probe_step", "zero_streak"]


class EmergenceCallback(Callback):
    r"""Measures emergence ``E`` and relative emergence ``E~ = E / P`` once per epoch.

    Nodes of each tracked layer (by default, every activation call site's output) are active when
    their mean output over the measured samples exceeds ``threshold``. With ``n_i`` nodes and
    ``a_i`` active ones in layer ``i``::

        E = sum_{i<j} (n_i - a_i) * a_j * prod_{k=i+1}^{j-1} n_k

    Measurements come from the validation forward passes (no extra compute), from the training
    passes when there is no validation loop, or from ``probe_dataloader`` when one is given; one
    more is taken before the first training step (epoch 0). They are logged with
    ``pl_module.log``, so ``EarlyStopping`` and ``ModelCheckpoint`` can monitor them (use
    ``emergence/log10_E``: E is beyond float32 on real CNNs), and kept exactly in :attr:`history`.
    ``trainer.test`` and ``trainer.predict`` runs are not measured.

    Args:
        threshold: a node is active when its activity exceeds this (the paper's 0.05).
        statistic: ``"mean"``, ``"fraction"`` (firing rate) or ``"max"``; see
            :class:`~emergence_lightning.measure.ActivityTracker`.
        variant: ``"paper"`` or ``"induced"``; see :func:`~emergence_lightning.emergence`.
        layers: the layers to keep, by module name (every call of it) or call-site name
            (``"layer1.0.relu-call2"``, ``"encoder.layers.0.relu-fn"``); ``None``: every activation
            call site (modules of any library, functional calls, recurrent outputs).
        node_dim: the dimension that indexes nodes, one int for every layer or a mapping from
            layer name to int; ``None`` decides it per layer from the layer that produced it (a
            conv's channels, a Linear's features); see ``docs/measure.md``.
        include_input: also track the data entering the first Linear/Conv.
        include_output: also track the logits leaving the last Linear/Conv.
        min_firing_rate: with ``statistic="fraction"``, the firing rate above which a node is active.
        probe_dataloader: measure on this fixed data at the end of every training epoch instead.
        probe_step: ``probe_step(pl_module, batch)`` runs the forward pass for the passes this
            callback drives itself (epoch 0, probe data). Default: the module's own
            ``validation_step`` (else ``training_step``) with its logging muted and its side
            effects undone, else ``pl_module(batch[0])``.
        measure_at_start: take the epoch-0 measurement before the first training step.
        stop_at_zero: stop training once E has been exactly 0 for ``patience + 1`` measurements.
        patience: measurements with E = 0 to tolerate before stopping.
        log_histograms: also log each layer's per-node activity as a TensorBoard histogram.
        prefix: the logged keys start with ``f"{prefix}/"``.
        connectivity: ``"dense"`` (the paper's formula) or ``"weights"``, which also counts the
            paths on the graph the weights define (pruned weights are no edge, residual skips
            are) and logs it as ``emergence/E_path``; see ``docs/connectivity.md``.
    """

    def __init__(
        self,
        threshold: float = 0.05,
        statistic: str = "mean",
        variant: str = "paper",
        layers: Sequence[str] | None = None,
        node_dim: int | Mapping[str, int] | None = None,
        include_input: bool = False,
        include_output: bool = False,
        min_firing_rate: float = 0.5,
        probe_dataloader: Iterable[Any] | None = None,
        probe_step: ProbeStep | None = None,
        measure_at_start: bool = True,
        stop_at_zero: bool = False,
        patience: int = 0,
        log_histograms: bool = False,
        prefix: str = "emergence",
        connectivity: str = "dense",
    ) -> None:
        check_callback_arguments(
            threshold=threshold, statistic=statistic, variant=variant, layers=layers, node_dim=node_dim,
            include_input=include_input, include_output=include_output, min_firing_rate=min_firing_rate,
            probe_dataloader=probe_dataloader, probe_step=probe_step, measure_at_start=measure_at_start,
            stop_at_zero=stop_at_zero, patience=patience, log_histograms=log_histograms, prefix=prefix,
            connectivity=connectivity,
        )  # fmt: skip
        self.threshold = float(threshold)
        self.statistic = statistic
        self.variant = variant
        self.layers = list(layers) if layers is not None else None
        self.node_dim = node_dim
        self.include_input = include_input
        self.include_output = include_output
        self.min_firing_rate = float(min_firing_rate)
        self.probe_dataloader = probe_dataloader
        self.probe_step = probe_step  # None: the module's own validation_step (see callbacks/probe.py)
        self.measure_at_start = measure_at_start
        self.stop_at_zero = stop_at_zero
        self.patience = patience
        self.log_histograms = log_histograms
        self.prefix = prefix
        self.connectivity = connectivity
        self._state_key = self._generate_state_key(
            threshold=self.threshold, statistic=statistic, variant=variant, prefix=prefix
        )
        #: One record per measurement: epoch, step, layers, n, a, E (exact int), relative, ...
        self.history: list[dict[str, Any]] = []
        self.tracker: ActivityTracker | None = None
        self._source: str | None = None  # "validation", "train" or "probe"
        self._window_open = False
        self._window_batches = 0  # batches fed to the model while the window is open
        self._unmeasured_batches = 0  # batches of validation dataloaders after the first
        self._warned_empty_first_loader = False
        self._paused = False  # a training-data window, closed to the validation batches running inside it
        self._measured_at_setup, self._failed = 0, False
        self._said_not_measured: set[str] = set()
        self._charted_layers: list[str] = []  # layers of the per-layer charts written to this run
        self._warned: set[str] = set()
        # connectivity="weights": E also counted on the weights' graph (None: the dense formula only).
        self._path_counter = PathExactCounter(variant) if connectivity == "weights" else None

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads this on every hook call (thousands per epoch): build the string once.
        return self._state_key

    @property
    def settings(self) -> dict[str, Any]:
        """The arguments that shape the measurement (logged to the hparams table)."""
        return {
            "threshold": self.threshold,
            "statistic": self.statistic,
            "variant": self.variant,
            # Layers are found as the forward pass runs; hparams are written before it.
            "layers": ",".join(self.layers) if self.layers else "every activation",
            "include_input": self.include_input,
            "include_output": self.include_output,
            "source": str(self._source),
            "connectivity": self.connectivity,
            "stop_at_zero": self.stop_at_zero,
            "patience": self.patience,
        }

    # ---- set-up and clean-up -------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        error = duplicate_prefix_error(trainer.callbacks, EmergenceCallback)
        if error:
            raise ValueError(error)
        if self.tracker is None or self.tracker.model is not pl_module:
            self.tracker = ActivityTracker(
                pl_module,
                layers=self.layers,
                threshold=self.threshold,
                statistic=self.statistic,
                min_firing_rate=self.min_firing_rate,
                node_dim=self.node_dim,
                include_input=self.include_input,
                include_output=self.include_output,
            )
        if count_parameters(pl_module) == 0:
            rank_zero_warn(
                f"{type(pl_module).__name__} has no trainable parameter: relative emergence is logged as NaN."
            )
        self._measured_at_setup, self._failed = len(self.history), False
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    # Before Lightning writes hparams.yaml (once, at the start of the run): ours go in too.
                    logger.hparams.update(self._hparams())

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close_window()
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
        if stage in ("fit", "validate") and not self._failed and len(self.history) == self._measured_at_setup:
            rank_zero_warn(
                f"EmergenceCallback measured nothing in this `trainer.{stage}` run: no batch reached a measurement "
                "(no validation or training batch, `limit_*_batches=0`, or `max_epochs=0`). Nothing was logged "
                f"under `{self.prefix}/`."
            )

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._failed = True
        self._close_window()

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._say_not_measured("test")

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._say_not_measured("predict")

    def _say_not_measured(self, stage: str) -> None:
        if stage in self._said_not_measured:
            return
        self._said_not_measured.add(stage)
        message = (
            f"EmergenceCallback does not measure `trainer.{stage}` runs (emergence is a property of training; "
            "test data must not steer it). Call `trainer.validate(model, dataloaders)` to measure on given data."
        )
        # Said as a warning when nothing was ever measured: the user then likely expected a measurement.
        (rank_zero_info if self.history else rank_zero_warn)(message)

    # ---- when to measure -----------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._source = state.measurement_source(trainer, self.probe_dataloader)
        self._log_tensorboard_extras(trainer)
        if self.measure_at_start and not self.history:
            batches, sampler = state.start_batches(trainer, self._source, self.probe_dataloader)
            measurement = self._run_probe(trainer, pl_module, batches, sampler)
            if measurement is not None:
                self._record(
                    trainer, pl_module, measurement, epoch=0, through_loggers=True, before_training=True
                )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last steps went unmeasured (max_steps mid-epoch, check_val_every_n_epoch > 1): measure the
        # final weights once, on the same samples, so the history always ends at the trained model.
        if self._source is None or not self.history or self.history[-1]["step"] == trainer.global_step:
            return
        self.measure_now(trainer, pl_module, epoch=state.epochs_completed(trainer, ended=True))

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn not in ("fit", "validate"):
            return
        if self._source in (None, "validation"):
            self._open_window(trainer, state.sampler_of(state.first(trainer.val_dataloaders)))
        elif self._window_open and self.tracker is not None:
            self._paused = True  # a training-data window: validation batches must not enter it
            self.tracker.enabled = False

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._window_open and self.tracker is not None and not self._paused:
            self.tracker.start_pass()
            self._remember_input(batch)
            # Only the first validation dataloader is measured, so every epoch sees the same data.
            self.tracker.enabled = dataloader_idx == 0

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._window_open and self.tracker is not None and not self._paused:
            self._window_batches += self.tracker.enabled  # counted once the batch really ran
            self._unmeasured_batches += not self.tracker.enabled

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._paused and self.tracker is not None:
            self._paused, self.tracker.enabled = False, True
            return
        if not self._window_open or self._source not in (None, "validation"):
            return
        measurement = self._close_window(trainer)
        if measurement is not None:
            self._record(trainer, pl_module, measurement, epoch=state.epochs_completed(trainer))
        elif self._unmeasured_batches and not self._warned_empty_first_loader:
            self._warned_empty_first_loader = True
            rank_zero_warn(
                "EmergenceCallback: the first validation dataloader gave no batch, so nothing was measured "
                f"this epoch ({self._unmeasured_batches} batches of the other dataloaders are not measured, "
                "so that every epoch sees the same data). Put the data to measure first, or pass "
                "`probe_dataloader=`."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._source == "train":
            self._open_window(trainer, None)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._window_open and self.tracker is not None:
            self.tracker.start_pass()
            self._remember_input(batch)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._window_open:
            self._window_batches += 1  # not at the start: `on_train_batch_start` may return -1 and skip it

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._source == "train" and self._window_open:
            measurement = self._close_window(trainer)
        elif self._source == "probe":
            assert self.probe_dataloader is not None
            measurement = self._run_probe(
                trainer, pl_module, self.probe_dataloader, state.sampler_of(self.probe_dataloader)
            )
        else:
            return
        if measurement is not None:
            self._record(
                trainer, pl_module, measurement, epoch=state.epochs_completed(trainer, epoch_over=True)
            )

    # ---- public: a measurement on demand, the history as records ----------------------------
    def measure_now(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        *,
        epoch: float,
        before_training: bool = False,
        log: bool = True,
    ) -> EmergenceRecord | None:
        """Takes one measurement now, on the data the epoch-0 pass uses, and records it.

        The pass runs in eval mode with no gradient, on the probe data, else the first validation
        dataloader, else the training data (the same samples every time). It never triggers
        ``stop_at_zero``: the caller decides what a measurement it asked for means.

        Args:
            trainer: the Trainer running ``pl_module`` (its loggers and strategy are used).
            pl_module: the module to measure (the one this callback was set up with).
            epoch: the epoch to record and log the measurement at.
            before_training: whether the weights have not been trained yet.
            log: also write the scalars (and histograms, if enabled) to ``trainer.loggers`` at
                ``trainer.global_step``.

        Returns:
            The record (also appended to :attr:`history`), or None when no sample was measured.
        """
        if self.tracker is None or self.tracker.model is not pl_module:
            raise RuntimeError(
                "EmergenceCallback.measure_now needs the callback set up on this module: call it from a hook "
                f"of a running `Trainer` whose callbacks include it (got {type(pl_module).__name__})."
            )
        if self._source is None:
            self._source = state.measurement_source(trainer, self.probe_dataloader)
        batches, sampler = state.start_batches(trainer, self._source, self.probe_dataloader)
        measurement = self._run_probe(trainer, pl_module, batches, sampler)
        if measurement is None:
            return None
        record = self._new_record(trainer, pl_module, measurement, epoch, before_training)
        self._append(trainer, record)
        if log:
            self._log_to_loggers(trainer, record)
            if self.log_histograms:
                write_activity_histograms(
                    trainer.loggers, self.prefix, measurement.layers, trainer.global_step
                )
        return EmergenceRecord.from_history(record)

    def records(self) -> list[EmergenceRecord]:
        """:attr:`history` as typed records, oldest first."""
        return [EmergenceRecord.from_history(entry) for entry in self.history]

    # ---- measurement windows -------------------------------------------------------------
    def _open_window(self, trainer: pl.Trainer, sampler: Any) -> None:
        assert self.tracker is not None
        self.tracker.limit_samples(state.real_samples_on_this_rank(sampler))
        self.tracker.reset()
        self.tracker.enabled = True
        self.tracker.attach()
        self._window_open, self._paused = True, False
        self._window_batches = self._unmeasured_batches = 0

    def _close_window(self, trainer: pl.Trainer | None = None) -> Measurement | None:
        """Removes the hooks; with a trainer, also reduces across processes and computes."""
        if self.tracker is None:
            return None
        self.tracker.detach()
        was_open, self._window_open, self._paused = self._window_open, False, False
        if trainer is None or not was_open:
            return None
        measurement = self.tracker.compute(
            reduce=lambda tensor, op: trainer.strategy.reduce(tensor, reduce_op=op)
        )
        # `measurement` is None on every process or on none; all take the same collective.
        batches = state.total_over_processes(trainer, self._window_batches) if measurement is None else 0
        if batches:
            # Never a silent gap in the history: batches went through, yet no hook was called.
            raise RuntimeError(
                f"EmergenceCallback: {batches} batches went through the model, but none of the tracked "
                f"layers {self.tracker.layer_names} produced an output: their forward hooks never ran. The "
                "forward pass must call these modules (not `module.forward(...)` or a functional op), and the "
                "step must run this model (not a copy, such as an EMA model): name the modules it does call "
                "in `layers=[...]`, or measure on `probe_dataloader=` with a `probe_step` that runs the model."
            )
        return measurement

    def _run_probe(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batches: Iterable[Any], sampler: Any
    ) -> Measurement | None:
        """A forward-only pass over ``batches`` in eval mode through the module's own step (see
        :mod:`~emergence_lightning.callbacks.probe`); every module's mode is restored.
        """
        assert self.tracker is not None
        modes = {module: module.training for module in pl_module.modules()}
        self._open_window(trainer, sampler)
        try:
            pl_module.eval()
            with torch.no_grad(), trainer.precision_plugin.val_step_context():
                for batch_idx, batch in enumerate(batches):
                    batch = trainer.strategy.batch_to_device(batch)
                    self.tracker.start_pass()
                    self._remember_input(batch)
                    self._window_batches += 1
                    run_step(pl_module, batch, batch_idx, self.probe_step)
        except BaseException:
            self._close_window()
            raise
        finally:
            for module, training in modes.items():
                module.training = training
        return self._close_window(trainer)

    # ---- recording, logging, stopping ----------------------------------------------------
    def _new_record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        measurement: Measurement,
        epoch: float,
        before_training: bool,
    ) -> dict[str, Any]:
        E = emergence(measurement.n, measurement.a, variant=self.variant)
        for key, message in layer_coverage_warnings(pl_module, measurement.names, E):
            if key not in self._warned:
                self._warned.add(key)
                rank_zero_warn(message)
        parameters = count_parameters(pl_module)
        record = {
            "epoch": epoch,
            "step": trainer.global_step,
            "layers": measurement.names,
            "n": measurement.n,
            "a": measurement.a,
            "E": E,
            "relative": relative_emergence(E, parameters) if parameters else math.nan,
            "log10_E": log10_emergence(E),
            "active_fraction": measurement.active_fraction,
            "parameters": parameters,
            "samples": measurement.samples,
            "before_training": before_training,
        }
        if self._path_counter is not None:
            E_path = self._path_counter.count(pl_module, measurement)
            record["E_path"] = E_path
            if E_path is not None:
                record["relative_path"] = relative_emergence(E_path, parameters) if parameters else math.nan
        return record

    def _log_to_loggers(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        """Writes a record straight to the loggers at ``global_step`` (where ``self.log`` can't: before the
        first step, in ``on_train_end``, or for a measurement the caller asked for).
        """
        metrics = {**all_metrics(record, self.prefix), "epoch": record["epoch"]}
        _write(trainer, metrics, trainer.global_step)

    def _record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        measurement: Measurement,
        epoch: float,
        through_loggers: bool = False,
        before_training: bool = False,
    ) -> None:
        record = self._new_record(trainer, pl_module, measurement, epoch, before_training)
        E = record["E"]
        self._append(trainer, record)
        if through_loggers:
            self._log_to_loggers(trainer, record)
        else:
            # `self.log` (which EarlyStopping and ModelCheckpoint read) only for the monitorable scalars;
            # per-layer counts go to the loggers in one call (two `self.log` calls a layer cost ~0.6 ms).
            for key, value in scalar_metrics(record, self.prefix).items():
                if not key.endswith(("/epoch", "active_fraction")) and pl_module.device.type != "mps":
                    # float64: E and E~ pass float32's range (inf) on real CNNs, and float32 would round
                    # log10 E (82.8 on mobilenet_v3_small) to 1e-5, hiding changes a monitor must see.
                    value = torch.tensor(value, dtype=torch.float64, device=pl_module.device)
                # Values are equal on every process; syncing keeps them so and silences the DDP warning.
                pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
            _write(trainer, layer_metrics(record, self.prefix), state.logging_step(trainer))
        if self.log_histograms:
            write_activity_histograms(trainer.loggers, self.prefix, measurement.layers, trainer.global_step)
        if self.stop_at_zero and before_training and E == 0:
            rank_zero_warn(
                "EmergenceCallback(stop_at_zero=True): E is already 0 before training (active nodes per "
                f"layer {dict(zip(measurement.names, measurement.a))} of {measurement.n}). E counts paths "
                "from a dead node to an active node in a later layer, so with no dead node before the last "
                "active one it is 0 whatever the accuracy, and training will stop after the next "
                f"{self.patience + 1} measurements if it stays 0. Check that `layers` covers the hidden layers, "
                "or watch E before stopping on it."
            )
        if self.stop_at_zero and not before_training:
            self._maybe_stop(trainer)

    def _append(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        """Adds ``record`` to :attr:`history`; the first time its layers are seen, charts them one by one."""
        if self._charted_layers != record["layers"]:
            # TensorBoard keeps a run's last layout: now that the layers are known, one chart per layer.
            self._write_layout(trainer, layers=dict(zip(record["layers"], record["n"])))
            self._charted_layers = list(record["layers"])
        self.history.append(record)

    def _remember_input(self, batch: Any) -> None:
        if self._path_counter is not None:
            self._path_counter.remember_input(batch)

    def _maybe_stop(self, trainer: pl.Trainer) -> None:
        streak = zero_streak(self.history)
        should_stop = trainer.strategy.reduce_boolean_decision(streak > self.patience, all=True)
        if should_stop and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(
                f"EmergenceCallback: emergence has been 0 for {streak} consecutive measurements "
                f"(patience={self.patience}); stopping training."
            )

    def _hparams(self) -> dict[str, Any]:
        settings = self.settings
        if self._source is None:
            del settings["source"]  # known from `on_train_start` on
        return {f"{self.prefix}/{key}": value for key, value in settings.items()}

    @rank_zero_only
    def _log_tensorboard_extras(self, trainer: pl.Trainer) -> None:
        # Per-layer charts once the layers are known (the first measurement of this run).
        self._charted_layers = []
        self._write_layout(trainer, layers=None)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Keep the model's hyperparameters in the table and add ours beside them.
                logger.log_hyperparams({**dict(logger.hparams), **self._hparams()})

    @rank_zero_only
    def _write_layout(self, trainer: pl.Trainer, layers: dict[str, int] | None) -> None:
        """Custom-scalars charts; with ``layers`` (known after the first measurement) one chart per layer."""
        layout = emergence_layout(self.prefix, path_exact=self.connectivity == "weights", layers=layers)
        write_custom_scalars(trainer.loggers, layout)

    # ---- checkpointing -------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(record) for record in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(record) for record in state_dict.get("history", [])]


@rank_zero_only
def _write(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
    """One ``log_metrics`` call per logger (rank zero writes, as Lightning's loggers do)."""
    if metrics:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
