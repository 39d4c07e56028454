"""EmergenceCallback: measure emergence each epoch (or every N steps), log it, and optionally stop at zero."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

from emergence_lightning.callbacks import emergence_checks as says
from emergence_lightning.callbacks import emergence_lifecycle as lifecycle
from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.callbacks.emergence_checks import (
    Connectivity,
    check_callback_arguments,
    duplicate_prefix_error,
    layer_coverage_warnings,
)
from emergence_lightning.callbacks.emergence_logging import (
    log_measurement,
    log_record,
    settings_hparams,
    write_layout,
    write_run_start,
)
from emergence_lightning.callbacks.emergence_record import EmergenceRecord, in_training_E, record_of
from emergence_lightning.callbacks.emergence_window import MeasurementWindow
from emergence_lightning.callbacks.loggers import settings_before_start
from emergence_lightning.callbacks.path_exact import PathExactCounter
from emergence_lightning.callbacks.probe import (
    ProbeSet,
    ProbeStep,
    batch_input,
    default_probe_step,
    probe_data,
)
from emergence_lightning.callbacks.tensorboard_views import write_activity_histograms
from emergence_lightning.functional import Variant, stops_at_zero, zero_streak
from emergence_lightning.measure import ActivityTracker, Measurement
from emergence_lightning.measure.observer import left_as_found
from emergence_lightning.measure.statistics import DEFAULT_STATISTIC, Statistic
from emergence_lightning.pruning import count_parameters

__all__ = ["EmergenceCallback", "batch_input", "default_probe_step"]

# The source of the measurements when a cadence is set: a fixed probe set drawn once.
PROBE_SET = "probe set"


class EmergenceCallback(Callback):
    r"""Measures emergence E and relative emergence E~ = E / P once per epoch, or every N steps.

    Nodes of each tracked layer (by default, every activation call site's output) are active when
    their mean output over the measured samples exceeds `threshold`. With n_i nodes and a_i active
    ones in layer i: E = sum over i<j of (n_i - a_i) * a_j * prod_{k=i+1}^{j-1} n_k.

    Measurements come from the validation forward passes (no extra compute; the first validation
    dataloader), from the training passes when there is no validation loop, or from
    `probe_dataloader` when one is given; one more is taken before the first training step (epoch
    0). With `every_n_train_steps` or `every_n_epochs`, every measurement is taken instead on a
    fixed probe set of `probe_batches` batches drawn once at the start. Values are logged so that
    `EarlyStopping` and `ModelCheckpoint` can monitor them (use `emergence/log10_E`: E is beyond
    float32 on real CNNs) and kept exactly in `history`. The callback never changes the run it
    observes (random states, data order, modes); `trainer.test` and `trainer.predict` runs are
    not measured. A measurement in which a tracked layer produced NaN or inf logs E as NaN.

    Args:
        threshold: a node is active when its activity exceeds this (the paper's 0.05).
        statistic: the per-node activity: "mean" (the paper's mean output), "mean_abs" (the mean of
            |a|, the default: equal to "mean" on ReLU outputs), "normalized_mean_abs" (ReDo's
            dormancy score; threshold is then its tau), "fraction" (firing rate) or "max"; see
            docs/measure.md, "What 'active' means".
        variant: how paths are counted: the paper's formula, or induced (see docs/measure.md).
        layers: the layers to keep, by module name (every call of it) or call-site name
            ("layer1.0.relu-call2", "encoder.layers.0.relu-fn"); None: every activation
            call site (modules of any library, functional calls, recurrent outputs).
        node_dim: the dimension that indexes nodes, one int for every layer or a mapping from
            layer name to int; None decides it per layer from the layer that produced it.
        include_input: also track the data entering the first Linear/Conv.
        include_output: also track the logits leaving the last Linear/Conv.
        min_firing_rate: with statistic "fraction", the firing rate above which a node is active.
        probe_dataloader: measure on this data (at the end of every training epoch, or as the
            source of the probe set with a cadence) instead of the validation or training data.
        probe_step: probe_step(pl_module, batch) runs the forward pass for the passes this callback
            drives itself (epoch 0, probe data). Default: the module's own validation_step (else
            training_step) with its logging muted and its side effects undone.
        measure_at_start: take the epoch-0 measurement before the first training step.
        stop_at_zero: stop training once E has been exactly 0 for patience + 1 measurements.
        patience: measurements with E = 0 to tolerate before stopping.
        log_histograms: also log each layer's per-node activity as a TensorBoard histogram.
        prefix: the logged keys start with this and a slash.
        connectivity: "dense" (the paper's formula) or "weights", which also counts the paths on
            the graph the weights define and logs it as emergence/E_path (see docs/connectivity.md).
        every_n_train_steps: measure on the probe set every this many optimizer steps (logged at
            the global step): the cadence for long runs (needs probe_batches).
        every_n_epochs: measure on the probe set at the end of every this many training epochs
            (needs probe_batches).
        probe_batches: how many batches every measurement reads: it bounds the epoch-0 pass, the
            probe, the validation or training passes measured; with a cadence, the size of the
            probe set (drawn once from probe_dataloader, else the first validation dataloader,
            else the training data, and kept in memory).
    """

    def __init__(
        self,
        threshold: float = 0.05,
        statistic: Statistic = DEFAULT_STATISTIC,
        variant: Variant = "paper",
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
        connectivity: Connectivity = "dense",
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        probe_batches: int | None = None,
    ) -> None:
        check_callback_arguments(
            threshold=threshold, statistic=statistic, variant=variant, layers=layers, node_dim=node_dim,
            include_input=include_input, include_output=include_output, min_firing_rate=min_firing_rate,
            probe_dataloader=probe_dataloader, probe_step=probe_step, measure_at_start=measure_at_start,
            stop_at_zero=stop_at_zero, patience=patience, log_histograms=log_histograms, prefix=prefix,
            connectivity=connectivity, every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs,
            probe_batches=probe_batches,
        )  # fmt: skip
        self.threshold = float(threshold)  # numpy scalars (np.float32(0.05)) become Python numbers
        self.statistic = statistic
        self.variant = variant
        self.layers = list(layers) if layers is not None else None
        self.node_dim = lifecycle.plain_node_dim(node_dim)
        self.include_input = include_input
        self.include_output = include_output
        self.min_firing_rate = float(min_firing_rate)
        self.probe_dataloader = probe_dataloader
        self.probe_step = probe_step  # None: the module's own validation_step (see callbacks/probe.py)
        self.measure_at_start = measure_at_start
        self.stop_at_zero = stop_at_zero
        self.patience = int(patience)
        self.log_histograms = log_histograms
        self.prefix = prefix
        self.connectivity = connectivity
        self.every_n_train_steps = lifecycle.int_or_none(every_n_train_steps)
        self.every_n_epochs = lifecycle.int_or_none(every_n_epochs)
        self.probe_batches = lifecycle.int_or_none(probe_batches)
        # A resume with other settings finds its history under the old key (see `on_load_checkpoint`).
        self._state_key = self._generate_state_key(
            threshold=self.threshold, statistic=statistic, variant=variant, prefix=prefix
        )
        #: One typed record per measurement, oldest first; each also reads as a dict (``record["E"]``).
        self.history: list[EmergenceRecord] = []
        self._source: str | None = None  # "validation", "train", "probe" or PROBE_SET
        self._run = 0  # which fit of this callback is running (records carry it)
        # With a cadence: the batches every measurement reads, as `probe_data` returns them.
        self._probe_set = ProbeSet()
        self._measured_at_setup, self._failed = 0, False
        self._said_not_measured: set[str] = set()
        self._charted_layers: list[str] = []  # layers of the per-layer charts written to this run
        self._warned: set[str] = set()
        # connectivity="weights": E also counted on the weights' graph (None: the dense formula only).
        self._path_counter = PathExactCounter(variant) if connectivity == "weights" else None
        self._window = MeasurementWindow(self._path_counter)

    @property
    def tracker(self) -> ActivityTracker | None:
        """The activity tracker on the module this callback was set up with (None before `setup`)."""
        return self._window.tracker

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads this on every hook call (thousands per epoch): build the string once.
        return self._state_key

    @property
    def cadence(self) -> bool:
        """Whether measurements come from the fixed probe set at a step or epoch cadence."""
        return self.every_n_train_steps is not None or self.every_n_epochs is not None

    @property
    def settings(self) -> dict[str, Any]:
        """The arguments that shape the measurement (logged to the hparams table)."""
        return {
            **self.measurement_settings(),
            # Layers are found as the forward pass runs; hparams are written before it.
            "layers": ",".join(self.layers) if self.layers else "every activation",
            "source": str(self._source),
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
            self._window.tracker = ActivityTracker(
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
        self._start_run(stage)
        self._measured_at_setup, self._failed = len(self.history), False
        if trainer.is_global_zero:
            # Before Lightning writes each logger's hyperparameters at the start of the run: ours go in too.
            settings_before_start(trainer.loggers, self._hparams())

    def _start_run(self, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
        run, message = lifecycle.run_of_new_stage(self.history, stage, self._run)
        if run != self._run:
            self._run, self._probe_set.data = run, None
        if message:
            rank_zero_info(message)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._window.close()
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
        if stage in ("fit", "validate") and not self._failed and len(self.history) == self._measured_at_setup:
            rank_zero_warn(says.measured_nothing(stage, self.prefix))

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._failed = True
        self._window.close()

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
        # Said as a warning when nothing was ever measured: the user then likely expected a measurement.
        (rank_zero_info if self.history else rank_zero_warn)(says.not_measured(stage))

    # ---- when to measure -----------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with left_as_found(pl_module):  # loading the validation data early must not move the random states
            self._source = state.measurement_source(trainer, self.probe_dataloader)
        if self.cadence:
            self._draw_probe_set(trainer, pl_module)
        self._log_tensorboard_extras(trainer)
        if self.measure_at_start and not self._records_of_this_run():
            measurement = self._own_pass(trainer, pl_module)
            if measurement is not None:
                # Resumed weights are trained weights: measured at their epoch, never "before training".
                fresh = trainer.global_step == 0
                epoch = 0 if fresh else trainer.current_epoch  # the epochs the checkpoint had completed
                self._record(
                    trainer, pl_module, measurement, epoch, through_loggers=True, before_training=fresh
                )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last steps went unmeasured (max_steps mid-epoch, check_val_every_n_epoch > 1): measure the
        # final weights once, on the same samples, so the history always ends at the trained model.
        records = self._records_of_this_run()
        if self._source is None or not records or records[-1].global_step == trainer.global_step:
            return
        self.measure_now(trainer, pl_module, epoch=state.epochs_completed(trainer, ended=True))

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn not in ("fit", "validate"):
            return
        if self._source in (None, "validation"):
            self._say_once_other_loaders_unmeasured(trainer)
            self._window.open(
                state.real_samples_on_this_rank(state.sampler_of(state.first(trainer.val_dataloaders)))
            )
        else:
            self._window.pause()  # a training-data window: validation batches must not enter it

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Only the first validation dataloader is measured, so every epoch sees the same data.
        self._window.start_pass(
            batch, measured=dataloader_idx == 0 and batch_idx < (self.probe_batches or math.inf)
        )

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
        self._window.count_pass()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._window.resume() or not self._window.is_open or self._source not in (None, "validation"):
            return
        measurement = self._window.close(trainer)
        if measurement is not None:
            self._record(trainer, pl_module, measurement, epoch=state.epochs_completed(trainer))
        elif "empty-first-loader" not in self._warned:
            self._warned.add("empty-first-loader")
            rank_zero_warn(says.EMPTY_FIRST_LOADER)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._source == "train":
            # Under DDP the sampler pads the data to a multiple of the processes: padding is not counted.
            sampler = state.sampler_of(state.first(trainer.train_dataloader))
            self._window.open(state.real_samples_on_this_rank(sampler))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._window.start_pass(batch, measured=batch_idx < (self.probe_batches or math.inf))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window.count_pass()  # not at the start: `on_train_batch_start` may return -1 and skip it
        step = trainer.global_step
        if (
            self.every_n_train_steps
            and step
            and step % self.every_n_train_steps == 0
            and not self._measured_at(step)
        ):
            measurement = self._own_pass(trainer, pl_module)
            if measurement is not None:
                epoch = state.epochs_completed(trainer, batch_over=True)
                self._record(trainer, pl_module, measurement, epoch, through_loggers=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._source == "train" and self._window.is_open:
            measurement = self._window.close(trainer)
        elif self._source == "probe" or (
            self._source == PROBE_SET
            and self.every_n_epochs
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and not self._measured_at(trainer.global_step)
        ):
            measurement = self._own_pass(trainer, pl_module)
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

        The pass runs in eval mode with no gradient, on the probe set (with a cadence), else the
        probe data, else the first validation dataloader, else the training data (the same samples
        every time), and leaves the run as it found it. It never triggers ``stop_at_zero``: the
        caller decides what a measurement it asked for means.

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
            with left_as_found(pl_module):
                self._source = state.measurement_source(trainer, self.probe_dataloader)
        measurement = self._own_pass(trainer, pl_module)
        if measurement is None:
            return None
        record = self._new_record(trainer, pl_module, measurement, epoch, before_training)
        self._append(trainer, record)
        if log:
            log_record(trainer, record, self.prefix)
            if self.log_histograms:
                write_activity_histograms(
                    trainer.loggers, self.prefix, measurement.layers, trainer.global_step
                )
        return record

    def records(self) -> list[EmergenceRecord]:
        """:attr:`history`, oldest first (a copy of the list; the records are frozen)."""
        return list(self.history)

    def _records_of_this_run(self) -> list[EmergenceRecord]:
        return [record for record in self.history if record.run == self._run]

    def _measured_at(self, step: int) -> bool:
        records = self._records_of_this_run()
        return bool(records) and records[-1].global_step == step

    # ---- the passes of our own and the data they read -----------------------------------------
    def _own_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Measurement | None:
        """A measurement on the data of the epoch-0 pass, the probe or the probe set (see `_probe_data`)."""
        return self._window.run_pass(trainer, pl_module, self._probe_data(trainer), self.probe_step)

    def _probe_data(self, trainer: pl.Trainer) -> tuple[Iterable[Any], float, int | None]:
        if self._source == PROBE_SET:
            assert self._probe_set.data is not None
            return self._probe_set.data
        return probe_data(trainer, self._source, self.probe_dataloader, self.probe_batches)

    def _draw_probe_set(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draws the cadence's probe set once; at a resume, says if it differs from the checkpoint's."""
        assert self.probe_batches is not None  # checked in __init__
        if self._probe_set.draw(trainer, pl_module, self._source, self.probe_dataloader, self.probe_batches):
            rank_zero_warn(says.PROBE_SET_CHANGED)
        self._source = PROBE_SET

    def _say_once_other_loaders_unmeasured(self, trainer: pl.Trainer) -> None:
        loaders = trainer.val_dataloaders
        count = len(loaders) if isinstance(loaders, (list, tuple, dict)) else 1
        if count > 1 and "other-loaders" not in self._warned:
            self._warned.add("other-loaders")
            rank_zero_warn(says.other_loaders_unmeasured(count))

    # ---- recording, logging, stopping ----------------------------------------------------
    def _new_record(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        measurement: Measurement,
        epoch: float,
        before_training: bool,
    ) -> EmergenceRecord:
        parameters = count_parameters(pl_module)
        E_path = self._path_counter.count(pl_module, measurement) if self._path_counter is not None else None
        record = record_of(
            measurement, variant=self.variant, parameters=parameters, global_step=trainer.global_step,
            epoch=epoch, before_training=before_training, run=max(self._run, 1), E_path=E_path,
        )  # fmt: skip
        for key, message in layer_coverage_warnings(pl_module, measurement.names, record.E):
            if key not in self._warned:
                self._warned.add(key)
                rank_zero_warn(message)
        if record.nonfinite_layers and f"nonfinite:{self._run}" not in self._warned:
            self._warned.add(f"nonfinite:{self._run}")
            rank_zero_warn(says.nonfinite(record.nonfinite_layers, self.prefix))
        return record

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
        self._append(trainer, record)
        if through_loggers:
            log_record(trainer, record, self.prefix)
        else:  # a Lightning loop's epoch end: the monitorable scalars through `pl_module.log` too
            log_measurement(trainer, pl_module, record, self.prefix)
        if self.log_histograms:
            write_activity_histograms(trainer.loggers, self.prefix, measurement.layers, trainer.global_step)
        if self.stop_at_zero and before_training and record.E == 0:
            rank_zero_warn(says.zero_before_training(record, self.patience))
        if self.stop_at_zero and not before_training:
            self._maybe_stop(trainer)

    def _append(self, trainer: pl.Trainer, record: EmergenceRecord) -> None:
        """Adds ``record`` to :attr:`history`; the first time its layers are seen, charts them one by one."""
        if self._charted_layers != list(record.names):
            # TensorBoard keeps a run's last layout: now that the layers are known, one chart per layer.
            write_layout(trainer, self.prefix, self._path_exact, layers=dict(zip(record.names, record.n)))
            self._charted_layers = list(record.names)
        self.history.append(record)

    def _maybe_stop(self, trainer: pl.Trainer) -> None:
        E = in_training_E(self.history)
        should_stop = trainer.strategy.reduce_boolean_decision(stops_at_zero(E, self.patience), all=True)
        if should_stop and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(
                f"EmergenceCallback: emergence has been 0 for {zero_streak(E)} consecutive measurements "
                f"(patience={self.patience}); stopping training."
            )

    def _hparams(self) -> dict[str, Any]:
        return settings_hparams(self.settings, self.prefix, source_known=self._source is not None)

    @rank_zero_only
    def _log_tensorboard_extras(self, trainer: pl.Trainer) -> None:
        self._charted_layers = []  # charted one by one once the layers are known (see `_append`)
        write_run_start(trainer, self.prefix, self._path_exact, self._hparams())

    @property
    def _path_exact(self) -> bool:
        return self.connectivity == "weights"

    # ---- checkpointing -------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [record.to_dict() for record in self.history],
            "settings": self.measurement_settings(),
            "probe_set": self._probe_set.fingerprint(),
        }

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning restores a callback's state only under its exact `state_key`, which holds the
        # threshold, statistic and variant: with one of them changed, find the history by prefix.
        states = checkpoint.get("callbacks", {})
        if self.state_key not in states:
            saved = lifecycle.state_by_prefix(states, type(self).__qualname__, self.prefix)
            if saved is not None:
                self.load_state_dict(saved)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history, self._run, warning = lifecycle.resumed(
            state_dict, self.measurement_settings(), self._run
        )
        if warning:
            rank_zero_warn(warning)
        self._probe_set.restore(None if warning else state_dict.get("probe_set"))

    # ---- what an experiment record holds -------------------------------------------------
    def measurement_settings(self) -> dict[str, Any]:
        """Every argument that changes what this callback measures or when it stops a run (kept in
        checkpoints and compared at a resume; recorded in the branches' experiment record).

        (``measure_at_start`` adds a point before training and changes no measured value: left out.)

        Plain values only (``probe_dataloader`` by its type and sample count, ``probe_step`` by its
        name), so that two runs compare equal exactly when they measure alike:
        ``PruneAndBranchCallback`` records it in its experiment record.
        """
        return lifecycle.measurement_settings(self)
