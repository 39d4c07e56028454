"""PruneAndBranchCallback: fork a trained model into a control and pruned branches, train and compare them.

The paper's section 4 experiment for any LightningModule: train ``branch_epoch`` epochs, copy the
model, magnitude-prune the copies, train every copy (the unpruned control included) for the
remaining epochs under identical conditions, and compare emergence, accuracy and convergence.

Design: the parent ``fit`` stops itself once ``branch_epoch`` epochs have finished; in
``on_fit_end`` (the parent's strategy is torn down, its process group, if any, still up) every
branch runs as a new ``Trainer`` built from the parent's settings. Under DDP every process runs
the same branches in the same order, and the branch trainers reuse the initialised process group
instead of launching processes. See ``docs/prune-and-branch.md``.
"""

from __future__ import annotations

import copy
import csv
import datetime
import inspect
import io
import json
import logging
import math
import os
import tempfile
import time
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    ModelCheckpoint,
    ModelPruning,
    ModelSummary,
    ProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from emergence_lightning.measure import check_flags
from emergence_lightning.branching import (
    PRUNING_FUNCTIONS,
    STRUCTURED_PRUNING_FUNCTIONS,
    MaskedTraining,
    apply_masks,
    check_amounts,
    epochs_to_fraction_of_final,
    find_prunable,
    fingerprint,
    keeps_masked_weights_at_zero,
    masks,
    percent,
    permanent_state_dict,
    pick_monitor,
    prune_model,
    pruned_name,
    random_pruned_name,
    reinitialize,
)
from emergence_lightning.branching.fork_state import (
    OptimizerState,
    capture_optimizer,
    capture_rng,
    capture_schedulers,
    load_optimizer,
    load_schedulers,
    restore_rng,
)
from emergence_lightning.branching.store import (
    ExperimentMismatchError,
    architecture,
    check_experiment,
    experiment_record,
    write_experiment,
)
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.functional import emergence_as_float
from emergence_lightning.pruning import count_parameters
from emergence_lightning.tensorboard_views import (
    branch_overlay_layout,
    flat_hparams,
    write_custom_scalars,
    write_hparams_entry,
)

#: Columns of ``summary.csv`` (``summary.json`` holds these and each branch's metric history).
SUMMARY_COLUMNS = (
    "name",
    "kind",
    "amount",
    "parameters",
    "parameters_dense",
    "E_fork",
    "relative_E_fork",
    "log10_E_fork",
    "E_end",
    "relative_E_end",
    "log10_E_end",
    "E_path_fork",
    "relative_E_path_fork",
    "E_path_end",
    "relative_E_path_end",
    "monitor",
    "final",
    "best",
    "best_epoch",
    "epochs_to_99",
    "epochs",
    "fork_epoch",
    "wall_time_s",
    "setup_s",
    "status",
    "error",
    "resumed",
    "log_dir",
    "state_dict",
    "fork_fingerprint",
)
#: Path-exact columns: filled when the branch's EmergenceCallback has ``connectivity="weights"``.
PATH_COLUMNS = ("E_path_fork", "relative_E_path_fork", "E_path_end", "relative_E_path_end")
RESULT_FILE = "result.json"
STATE_DICT_FILE = "final_state_dict.pt"
#: What a branch starts with besides the weights: the parent's optimizer, scheduler and RNG state, or fresh ones.
OPTIMIZER_STATES = ("continue", "fresh")
# Trainer arguments a branch takes from this callback, never from `trainer_kwargs`.
_RESERVED_TRAINER_KWARGS = ("callbacks", "logger")


@dataclass(frozen=True)
class BranchSpec:
    """One branch: its name (and run directory), kind, and the pruning fraction it gets."""

    name: str
    kind: str  # "control", "pruned", "random-dense" or "random-pruned"
    amount: float


@dataclass(frozen=True)
class ForkPoint:
    """Where the parent stopped: the branches continue its epoch and step counters from here."""

    epoch: int
    global_step: int
    batches_that_stepped: int
    fingerprint: str


@dataclass(frozen=True)
class ForkState:
    """The parent's training state at the fork, loaded into every branch (``optimizer_state="continue"``)."""

    optimizers: list[OptimizerState]
    schedulers: list[tuple[str, dict[str, Any]]]
    rng: dict[str, Any]


class PruneAndBranchCallback(Callback):
    r"""Forks the model after ``branch_epoch`` epochs into a control and pruned copies, and trains each.

    When ``trainer.fit`` returns, the model has trained ``branch_epoch`` epochs; copies of it were
    pruned by each of ``amounts`` (by default the ``amount`` smallest-magnitude entries across every
    trainable weight of a Linear, Conv or ``nn.MultiheadAttention``: the weights ``P`` counts; each
    result's ``pruned_tensors`` lists them) and, with an unpruned control, each trained for the
    parent's remaining epochs from the parent's full training state at the fork: weights,
    optimizer state (pruned entries' momentum zeroed), LR schedulers, data order and RNG, so the
    control *is* the unforked run; with fresh copies of the parent's other callbacks and the
    parent's accelerator, devices, precision and strategy. Each branch logs to its own run ``<log_dir>/branches/<name>/``, on
    the parent's epoch and step axes, so TensorBoard overlays the curves; ``results`` and
    ``<log_dir>/branches/summary.csv`` / ``summary.json`` compare them.

    Per branch: ``E`` and ``E~ = E / P`` at the fork and at the end (from the branch's
    ``EmergenceCallback``, when the parent has one; with ``connectivity="weights"`` also the
    path-exact ``E_path``, which counts no path through a pruned weight), the effective parameter
    count ``P``, the final and best value of ``monitor``, epochs to reach 99% of the final value,
    wall time and status.

    Args:
        branch_epoch: finished epochs before the fork (the paper's 5); below the Trainer's ``max_epochs``.
        amounts: pruning fractions in ``[0, 1)``, one pruned branch each (``pruned-30`` for 0.3).
        pruning_fn: ``"l1_unstructured"`` (magnitude), ``"random_unstructured"``, ``"ln_structured"``
            (whole output neurons/channels by their norm) or ``"random_structured"``.
        use_global_unstructured: rank weights across all pruned layers together; ``None``: yes for
            unstructured functions, per layer for structured ones.
        parameter_names: parameters of each module to prune.
        modules: qualified names of the modules to prune; ``None``: every Linear, Conv and
            MultiheadAttention whose weight is trainable (the output layer excepted for structured pruning).
        pruning_dim: dimension whose slices structured pruning removes (0: output neurons/channels).
        pruning_norm: norm ``ln_structured`` ranks slices by.
        random_controls: also train a randomly initialised copy (``random-dense``) and, per amount,
            one carrying the pruned branch's mask (``random-pruned-<pct>``): the paper's section 4.3.
        branch_datamodule: the branches train on this instead of the parent's data (transfer).
        branch_train_dataloaders: or on these training dataloaders ...
        branch_val_dataloaders: ... and these validation dataloaders.
        monitor: the metric to compare; ``None``: validation accuracy when logged, else validation loss.
        mode: ``"max"`` or ``"min"`` for ``monitor``; ``None`` guesses from its name.
        seed: seeds random pruning and re-initialisation; with ``optimizer_state="fresh"`` also the
            branches' data order and dropout (with ``"continue"`` they continue the parent's RNG).
        trainer_kwargs: ``Trainer`` arguments that override the ones taken from the parent
            (``max_epochs`` sets where the branches end; ``strategy`` may name a registered strategy).
        resume: skip branches a previous run with the same log directory finished, reading their results.
        verbose: print the summary table.
        fast_masks: while a pruned branch trains, keep its pruned ``*_orig`` entries at zero and mask
            gradients once per optimizer step instead of multiplying every weight by its mask in every
            forward pass (:class:`~emergence_lightning.branching.MaskedTraining`): the same forward
            values and gradients, at a fraction of the cost. ``False`` keeps ``torch.nn.utils.prune``'s
            hooks as they are (automatic when a branch has a ``ModelPruning`` callback).
        optimizer_state: ``"continue"`` (default): the control and pruned branches load the parent's
            optimizer and LR scheduler state and continue its global RNG, as "identical copies" that
            "continue training"; random controls, new networks, start a fresh optimizer.
            ``"fresh"``: every branch calls ``configure_optimizers`` afresh (momentum and schedule
            restart at the fork) and is seeded with ``seed``.

    Example::

        trainer = Trainer(max_epochs=20, logger=TensorBoardLogger("runs"),
                          callbacks=[EmergenceCallback(), PruneAndBranchCallback(branch_epoch=5)])
        trainer.fit(model, datamodule=dm)
        callback.results   # one dict per branch: control, pruned-30, pruned-50, pruned-70
    """

    def __init__(
        self,
        branch_epoch: int = 5,
        amounts: Sequence[float] = (0.3, 0.5, 0.7),
        pruning_fn: str = "l1_unstructured",
        use_global_unstructured: bool | None = None,
        parameter_names: Sequence[str] = ("weight",),
        modules: Sequence[str] | None = None,
        pruning_dim: int = 0,
        pruning_norm: float | str = 1,
        random_controls: bool = False,
        branch_datamodule: pl.LightningDataModule | None = None,
        branch_train_dataloaders: Any = None,
        branch_val_dataloaders: Any = None,
        monitor: str | None = None,
        mode: str | None = None,
        seed: int = 0,
        trainer_kwargs: dict[str, Any] | None = None,
        resume: bool = True,
        verbose: bool = True,
        fast_masks: bool = True,
        optimizer_state: str = "continue",
    ) -> None:
        if isinstance(branch_epoch, bool) or not isinstance(branch_epoch, int) or branch_epoch < 1:
            raise ValueError(f"`branch_epoch` must be an int >= 1, got {branch_epoch!r}.")
        self.amounts = check_amounts(amounts)
        if pruning_fn not in PRUNING_FUNCTIONS:
            raise ValueError(f"`pruning_fn` must be one of {PRUNING_FUNCTIONS}, got {pruning_fn!r}.")
        structured = pruning_fn in STRUCTURED_PRUNING_FUNCTIONS
        if use_global_unstructured not in (None, True, False):
            raise ValueError(
                f"`use_global_unstructured` must be True, False or None, got {use_global_unstructured!r}."
            )
        if structured and use_global_unstructured:
            raise ValueError(
                f"`use_global_unstructured=True` works with unstructured pruning only, got `pruning_fn`={pruning_fn!r}; "
                "structured pruning is per layer: pass `use_global_unstructured=False` (or None)."
            )
        if (
            isinstance(parameter_names, str)
            or not parameter_names
            or not all(isinstance(name, str) and name for name in parameter_names)
        ):
            raise ValueError(
                f"`parameter_names` must be a non-empty sequence of names, got {parameter_names!r}."
            )
        if modules is not None and (
            isinstance(modules, str) or not modules or not all(isinstance(name, str) for name in modules)
        ):
            raise ValueError(
                f"`modules` must be None or a non-empty sequence of module names, got {modules!r}."
            )
        if isinstance(pruning_dim, bool) or not isinstance(pruning_dim, int):
            raise TypeError(f"`pruning_dim` must be an int, got {pruning_dim!r}.")
        if branch_datamodule is not None and (
            branch_train_dataloaders is not None or branch_val_dataloaders is not None
        ):
            raise ValueError(
                "Pass either `branch_datamodule` or `branch_train_dataloaders`/`branch_val_dataloaders`, not both; "
                f"got branch_datamodule={type(branch_datamodule).__name__}."
            )
        if branch_val_dataloaders is not None and branch_train_dataloaders is None:
            raise ValueError(
                "`branch_val_dataloaders` needs `branch_train_dataloaders` too, got branch_train_dataloaders=None."
            )
        if branch_datamodule is not None and not isinstance(branch_datamodule, pl.LightningDataModule):
            raise TypeError(
                f"`branch_datamodule` must be a LightningDataModule, got {type(branch_datamodule).__name__}."
            )
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"`monitor` must be None or a metric name, got {monitor!r}.")
        if mode not in (None, "min", "max"):
            raise ValueError(f"`mode` must be 'min', 'max' or None, got {mode!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {seed!r}.")
        if optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"`optimizer_state` must be one of {OPTIMIZER_STATES}, got {optimizer_state!r}.")
        check_flags(random_controls=random_controls, resume=resume, verbose=verbose, fast_masks=fast_masks)
        if not _valid_norm(pruning_norm):
            raise ValueError(
                f"`pruning_norm` must be a number (1, 2, float('inf'), ...) or 'fro'/'nuc', as torch.norm's `p`, "
                f"got {pruning_norm!r}."
            )
        if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
            raise TypeError(
                f"`trainer_kwargs` must be a dict of Trainer arguments, got {type(trainer_kwargs).__name__}."
            )
        trainer_kwargs = dict(trainer_kwargs or {})
        unknown = sorted(set(trainer_kwargs) - set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"})
        if unknown:
            raise ValueError(f"`trainer_kwargs` has arguments the Trainer does not take: {unknown!r}.")
        reserved = sorted(set(trainer_kwargs) & set(_RESERVED_TRAINER_KWARGS))
        if reserved:
            raise ValueError(
                f"`trainer_kwargs` may not set {reserved!r}: branches get fresh copies of the parent's callbacks "
                "and a logger under the parent's log directory."
            )
        self.branch_epoch = branch_epoch
        self.pruning_fn = pruning_fn
        self.use_global_unstructured = use_global_unstructured
        self.parameter_names = tuple(parameter_names)
        self.modules = list(modules) if modules is not None else None
        self.pruning_dim = pruning_dim
        self.pruning_norm = pruning_norm
        self.random_controls = bool(random_controls)
        self.branch_datamodule = branch_datamodule
        self.branch_train_dataloaders = branch_train_dataloaders
        self.branch_val_dataloaders = branch_val_dataloaders
        self.monitor = monitor
        self.mode = mode
        self.seed = seed
        self.trainer_kwargs = trainer_kwargs
        self.resume = resume
        self.verbose = verbose
        self.fast_masks = bool(fast_masks)
        self.optimizer_state = optimizer_state
        self.fork_state: ForkState | None = None
        self._state_key = self._generate_state_key(
            branch_epoch=branch_epoch, amounts=self.amounts, pruning_fn=pruning_fn
        )
        #: One dict per branch, in the order they ran (see ``SUMMARY_COLUMNS``, plus ``history``).
        self.results: list[dict[str, Any]] = []
        #: The directory holding the branch runs and the summary, once known.
        self.branches_dir: Path | None = None
        self.fork: ForkPoint | None = None
        #: Seconds spent on the fork itself (``fork_s``) and on all branches (``branches_s``).
        self.timings: dict[str, float] = {}
        self._templates: list[Callback] = []
        self._forked = False

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @property
    def branches(self) -> list[BranchSpec]:
        """The branches, in the order they run."""
        specs = [BranchSpec("control", "control", 0.0)]
        specs += [BranchSpec(pruned_name(amount), "pruned", amount) for amount in self.amounts]
        if self.random_controls:
            specs.append(BranchSpec("random-dense", "random-dense", 0.0))
            specs += [
                BranchSpec(random_pruned_name(amount), "random-pruned", amount) for amount in self.amounts
            ]
        return specs

    # ---- set-up: check the trainer and model, remember fresh callbacks ------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 0 or self.branch_epoch > max_epochs:
            raise ValueError(
                f"`branch_epoch`={self.branch_epoch} must be below the Trainer's `max_epochs`, got "
                f"max_epochs={max_epochs!r}: the parent trains `branch_epoch` epochs, the branches the rest."
            )
        branch_max = self.trainer_kwargs.get("max_epochs", max_epochs)
        if branch_max is None or branch_max < 0 or self.branch_epoch >= branch_max:
            source = (
                "`trainer_kwargs['max_epochs']`" if "max_epochs" in self.trainer_kwargs else "`max_epochs`"
            )
            raise ValueError(
                f"`branch_epoch`={self.branch_epoch} must be below the Trainer's {source}, got {branch_max!r}: "
                "the branches would have no epoch to train."
            )
        min_epochs = trainer.min_epochs
        if min_epochs is not None and min_epochs > self.branch_epoch:
            raise ValueError(
                f"The Trainer's `min_epochs`={min_epochs} keeps the parent training past `branch_epoch`={self.branch_epoch}; "
                "lower `min_epochs`."
            )
        # Names, parameter names and "nothing to prune" are checked on the real model now, not at the fork.
        find_prunable(
            pl_module,
            self.modules,
            self.parameter_names,
            skip_last=self.pruning_fn in STRUCTURED_PRUNING_FUNCTIONS,
        )
        if "strategy" not in self.trainer_kwargs:
            _check_strategy(trainer.strategy)
        # Before training the parent: a directory holding another model's or setting's branches is refused now.
        record = experiment_record(None, architecture(pl_module), self._experiment_settings(trainer))
        self._check_experiment(trainer, Path(trainer.log_dir or trainer.default_root_dir) / "branches", record, False)
        if not trainer.loggers:
            rank_zero_warn(
                "PruneAndBranchCallback: the Trainer has no logger, so the branches log nothing; results go to "
                f"{os.path.join(trainer.default_root_dir, 'branches')}."
            )
        # Copies of the other callbacks as they are before training, to hand each branch a fresh one.
        self._templates = [
            template
            for callback in trainer.callbacks
            if (template := _template(callback, trainer, pl_module)) is not None
        ]

    # ---- the parent: stop at the fork --------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > self.branch_epoch:
            raise RuntimeError(
                f"PruneAndBranchCallback: training resumed at epoch {trainer.current_epoch}, past `branch_epoch`="
                f"{self.branch_epoch}; the weights at the fork are gone. Resume from a checkpoint of epoch "
                f"{self.branch_epoch} or earlier."
            )
        if trainer.current_epoch == self.branch_epoch:
            trainer.should_stop = True  # resumed exactly at the fork: branch right away

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.branch_epoch:
            trainer.should_stop = True

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._forked:
            return
        if trainer.current_epoch != self.branch_epoch:
            rank_zero_warn(
                f"PruneAndBranchCallback: training stopped after {trainer.current_epoch} epochs, before "
                f"`branch_epoch`={self.branch_epoch} (early stopping, max_steps or a time limit); no branch was run."
            )
            return
        self._forked = True
        self.run_branches(trainer, pl_module)

    # ---- the branches -------------------------------------------------------------------------
    def run_branches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """Forks ``pl_module`` as ``trainer`` left it and trains every branch; returns :attr:`results`."""
        started = time.perf_counter()
        rng = capture_rng()  # first: where the unforked run's next epoch would draw from
        parent_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self.branches_dir = parent_dir / "branches"
        self.fork = ForkPoint(
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            batches_that_stepped=trainer.fit_loop.epoch_loop._batches_that_stepped,
            fingerprint=fingerprint(pl_module.state_dict()),
        )
        if self.monitor is None:
            picked = pick_monitor(trainer.callback_metrics)
            monitor, mode = picked if picked else (None, "max")
        else:
            monitor, mode = self.monitor, None
        mode = self.mode or mode or ("max" if "acc" in str(monitor).lower() else "min")
        record = experiment_record(
            self.fork.fingerprint, architecture(pl_module), self._experiment_settings(trainer)
        )
        self._check_experiment(trainer, self.branches_dir, record, True)
        if trainer.is_global_zero:
            write_experiment(self.branches_dir, record, _atomic_write_text)
        specs = self.branches
        previous = self._read_finished(specs) if (self.resume and trainer.is_global_zero) else {}
        previous = trainer.strategy.broadcast(previous)  # every process skips the same branches
        base_kwargs = self._trainer_kwargs(trainer)
        data = self._data_kwargs(trainer)
        generators = _generator_states(data.values())
        dense_parameters = count_parameters(pl_module)
        self.fork_state = None
        if self.optimizer_state == "continue":
            self.fork_state = ForkState(
                optimizers=[capture_optimizer(optimizer, pl_module) for optimizer in trainer.optimizers],
                schedulers=capture_schedulers([config.scheduler for config in trainer.lr_scheduler_configs]),
                rng=rng,
            )
        pl_module.cpu()  # the parent's strategy has moved it back already on GPU; copies start on the host
        self.results = [result for result in self.results if result["name"] not in {s.name for s in specs}]
        self.timings = {"fork_s": time.perf_counter() - started}
        with _preserve_seed_environment(), isolate_rng():
            for spec in specs:
                if spec.name in previous:
                    result = {**previous[spec.name], "resumed": True}
                else:
                    _restore_generators(generators)
                    result = self._run_branch(
                        spec, trainer, pl_module, base_kwargs, data, monitor, mode, dense_parameters
                    )
                self.results.append(result)
                if trainer.is_global_zero:
                    self._write_summary(monitor, mode)
                trainer.strategy.barrier("prune-and-branch")
        self.timings["branches_s"] = time.perf_counter() - started
        if self.verbose:
            rank_zero_info(self.summary_table())
        rank_zero_info(
            f"PruneAndBranchCallback: {len(specs)} branches in {self.timings['branches_s']:.1f} s; "
            f"summary in {self.branches_dir / 'summary.csv'}"
        )
        return self.results

    def _run_branch(
        self,
        spec: BranchSpec,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        base_kwargs: dict[str, Any],
        data: dict[str, Any],
        monitor: str | None,
        mode: str,
        dense_parameters: int,
    ) -> dict[str, Any]:
        assert self.branches_dir is not None and self.fork is not None
        started = time.perf_counter()
        run_dir = self.branches_dir / spec.name
        if trainer.is_global_zero:
            _clear_stale_run(run_dir)
        trainer.strategy.barrier("prune-and-branch-clear")
        recorder = _BranchRecorder(self, spec, monitor, mode)
        result: dict[str, Any] = {
            "name": spec.name,
            "kind": spec.kind,
            "amount": spec.amount,
            "pruning_fn": self.pruning_fn if spec.kind in ("pruned", "random-pruned") else None,
            "parameters": None,
            "parameters_dense": dense_parameters,
            "monitor": monitor,
            "mode": mode,
            "fork_epoch": self.fork.epoch,
            "log_dir": str(run_dir),
            "fork_fingerprint": self.fork.fingerprint,
            "resumed": False,
        }
        model: pl.LightningModule | None = None
        try:
            if self.fork_state is None:
                pl.seed_everything(self.seed, workers=True, verbose=False)
            model = self._branch_model(spec, pl_module)
            result["parameters"] = count_parameters(model)
            result["pruned_tensors"] = list(masks(model))  # qualified names, e.g. `net.0.weight`
            callbacks = self._fresh_callbacks(spec, base_kwargs)
            emergence_callback = next((cb for cb in callbacks if isinstance(cb, EmergenceCallback)), None)
            recorder.emergence_callback = emergence_callback
            if emergence_callback is not None:
                emergence_callback.measure_at_start = False  # the recorder measures at the fork instead
            kwargs = {**base_kwargs, **self.trainer_kwargs}
            kwargs["strategy"] = (
                copy.deepcopy(self.trainer_kwargs["strategy"])  # the user's instance, never used itself
                if "strategy" in self.trainer_kwargs and not isinstance(self.trainer_kwargs["strategy"], str)
                else kwargs["strategy"]
                if "strategy" in self.trainer_kwargs
                else _fresh_strategy(base_kwargs["strategy"])
            )
            kwargs = _drop_disabled_callbacks(kwargs, callbacks)
            loggers = self._branch_loggers(trainer, spec)
            with _quiet_lightning_info():  # "GPU available: ..." once per branch says nothing new
                branch_trainer = pl.Trainer(
                    **kwargs, callbacks=[*callbacks, recorder], logger=loggers or False
                )
            _continue_from(branch_trainer, self.fork)
            if trainer.is_global_zero:
                write_custom_scalars(loggers, branch_overlay_layout(monitor))
            recorder.set_up_in = time.perf_counter() - started  # until fit; fit adds its own set-up below
            recorder.fit_started = time.perf_counter()
            branch_trainer.fit(model, **data)
            status, error = "finished", None
        except Exception as exception:  # noqa: BLE001 - a failing branch must not take the others down
            status, error = "failed", f"{type(exception).__name__}: {exception}"
            rank_zero_warn(f"PruneAndBranchCallback: branch {spec.name!r} failed: {error}")
        result.update(recorder.summary())
        result.update(status=status, error=error, wall_time_s=round(time.perf_counter() - started, 3))
        if status == "finished" and model is not None and trainer.is_global_zero:
            path = run_dir / STATE_DICT_FILE
            _atomic_torch_save(permanent_state_dict(model), path)
            result["state_dict"] = str(path)
        else:
            result["state_dict"] = None
        if trainer.is_global_zero:
            _atomic_write_text(run_dir / RESULT_FILE, json.dumps(_jsonable(result), indent=2))
        return result

    def _branch_model(self, spec: BranchSpec, pl_module: pl.LightningModule) -> pl.LightningModule:
        """A copy of the parent at the fork, pruned or re-initialised as ``spec`` says."""
        model = _copy_module(pl_module)
        if spec.kind == "pruned":
            self._prune(model, spec.amount)
        elif spec.kind in ("random-dense", "random-pruned"):
            if spec.kind == "random-pruned":
                # The mask of the pruned branch: prune a copy of the trained model, exactly as that branch was.
                torch.manual_seed(self.seed)
                reference = self._prune(_copy_module(pl_module), spec.amount)
                mask_by_name = masks(reference)
                del reference
            torch.manual_seed(self.seed)
            left = reinitialize(model)
            if left:
                rank_zero_warn(
                    f"PruneAndBranchCallback: {spec.name}: modules {left!r} have parameters but no "
                    "`reset_parameters()`; they keep their trained values."
                )
            if spec.kind == "random-pruned":
                apply_masks(model, mask_by_name)
        return model

    def _prune(self, model: pl.LightningModule, amount: float) -> pl.LightningModule:
        torch.manual_seed(self.seed)  # random_* pruning draws the same mask in every process and rerun
        return prune_model(
            model,
            amount,
            pruning_fn=self.pruning_fn,
            use_global_unstructured=self.use_global_unstructured,
            parameter_names=self.parameter_names,
            modules=self.modules,
            pruning_dim=self.pruning_dim,
            pruning_norm=self.pruning_norm,
        )

    def _fresh_callbacks(self, spec: BranchSpec, kwargs: dict[str, Any]) -> list[Callback]:
        fresh = []
        for template in self._templates:
            callback = _copy_shared_data(template)
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                # A user-given folder: keep each branch's checkpoints apart from the parent's.
                callback.dirpath = os.path.join(callback.dirpath, "branches", spec.name)
            fresh.append(callback)
        return fresh

    def _branch_loggers(self, trainer: pl.Trainer, spec: BranchSpec) -> list[Any]:
        assert self.branches_dir is not None
        loggers: list[Any] = []
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                loggers.append(
                    TensorBoardLogger(
                        str(self.branches_dir), name=spec.name, version="", default_hp_metric=False
                    )
                )
            elif isinstance(logger, CSVLogger):
                loggers.append(CSVLogger(str(self.branches_dir), name=spec.name, version=""))
            else:
                rank_zero_warn(
                    f"PruneAndBranchCallback: branches are not logged to the parent's {type(logger).__name__}; "
                    "they log to TensorBoard and CSV loggers only.",
                )
        return loggers

    def _trainer_kwargs(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The parent's settings, for a branch trainer that continues where the parent stopped."""
        kwargs: dict[str, Any] = {
            "num_nodes": trainer.num_nodes,
            "precision": trainer.precision,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "limit_train_batches": trainer.limit_train_batches,
            "limit_val_batches": trainer.limit_val_batches,
            "overfit_batches": trainer.overfit_batches,
            "val_check_interval": _val_check_interval(trainer),
            "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
            "log_every_n_steps": trainer.log_every_n_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
            "reload_dataloaders_every_n_epochs": trainer.reload_dataloaders_every_n_epochs,
            "default_root_dir": trainer.default_root_dir,
            "barebones": trainer.barebones,
            "inference_mode": trainer.validate_loop.inference_mode,
            "use_distributed_sampler": trainer._accelerator_connector.use_distributed_sampler,
            "sync_batchnorm": trainer._accelerator_connector._layer_sync is not None,
            "detect_anomaly": trainer._detect_anomaly,
            # The parent validated this model already, and one summary of it is enough.
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
        }
        # Leave Lightning's defaults out: passing them explicitly makes it print what they mean, per branch.
        for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
            if isinstance(kwargs[key], float) and kwargs[key] == 1.0:
                del kwargs[key]
        if not kwargs["overfit_batches"]:
            del kwargs["overfit_batches"]
        if trainer.barebones:
            for key in (
                "num_sanity_val_steps",
                "enable_model_summary",
                "log_every_n_steps",
                "detect_anomaly",
            ):
                kwargs.pop(key)
        accelerator = trainer.accelerator
        if isinstance(accelerator, CPUAccelerator):
            kwargs.update(accelerator="cpu", devices=trainer.num_devices)
        elif isinstance(accelerator, CUDAAccelerator):
            kwargs.update(accelerator="cuda", devices=list(trainer.device_ids))
        elif isinstance(accelerator, MPSAccelerator):
            kwargs.update(accelerator="mps", devices=list(trainer.device_ids))
        else:
            kwargs.update(accelerator=type(accelerator)(), devices=list(trainer.device_ids))
        # A strategy instance binds to one trainer: each branch builds its own (see `_run_branch`).
        kwargs["strategy"] = self.trainer_kwargs.get("strategy", trainer.strategy)
        return kwargs

    def _data_kwargs(self, trainer: pl.Trainer) -> dict[str, Any]:
        if self.branch_datamodule is not None:
            return {"datamodule": self.branch_datamodule}
        if self.branch_train_dataloaders is not None:
            data = {"train_dataloaders": self.branch_train_dataloaders}
            if self.branch_val_dataloaders is not None:
                data["val_dataloaders"] = self.branch_val_dataloaders
            return data
        if trainer.datamodule is not None:
            return {"datamodule": trainer.datamodule}
        # Dataloaders passed to the parent's fit (when the model's own hooks give them, a copy has them too).
        data = {}
        for key, loop in (
            ("train_dataloaders", trainer.fit_loop),
            ("val_dataloaders", trainer.fit_loop.epoch_loop.val_loop),
        ):
            source = getattr(loop, "_data_source", None)
            instance = getattr(source, "instance", None)
            if instance is not None and not isinstance(
                instance, (pl.LightningModule, pl.LightningDataModule)
            ):
                data[key] = instance
        return data

    # ---- results -------------------------------------------------------------------------------
    def _read_finished(self, specs: Sequence[BranchSpec]) -> dict[str, dict[str, Any]]:
        """Results of branches a previous run with this log directory finished, by name."""
        assert self.branches_dir is not None
        found = {}
        for spec in specs:
            path = self.branches_dir / spec.name / RESULT_FILE
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            same = (
                result.get("status") == "finished"
                and result.get("kind") == spec.kind
                and result.get("fork_epoch") == self.branch_epoch
                and math.isclose(float(result.get("amount", -1)), spec.amount)
                and (
                    spec.kind not in ("pruned", "random-pruned")
                    or result.get("pruning_fn") == self.pruning_fn
                )
                and result.get("fork_fingerprint") == self.fork.fingerprint
                and (self.branches_dir / spec.name / STATE_DICT_FILE).is_file()
            )
            if same:
                found[spec.name] = result
        return found

    def _experiment_settings(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The settings every branch shares, recorded in ``experiment.json`` (see :mod:`~emergence_lightning.branching.store`)."""
        data = self.branch_datamodule or self.branch_train_dataloaders
        return {
            "branch_epoch": self.branch_epoch,
            "max_epochs": self.trainer_kwargs.get("max_epochs", trainer.max_epochs),
            "pruning_fn": self.pruning_fn,
            "use_global_unstructured": self.use_global_unstructured,
            "parameter_names": list(self.parameter_names),
            "modules": self.modules,
            "pruning_dim": self.pruning_dim,
            "pruning_norm": self.pruning_norm,
            "seed": self.seed,
            "optimizer_state": self.optimizer_state,
            "branch_data": type(data).__name__ if data is not None else None,
        }

    def _check_experiment(self, trainer: pl.Trainer, directory: Path, record: dict[str, Any], weights: bool) -> None:
        """Raises, in every process, when ``directory`` holds another experiment's branches (rank zero reads)."""
        message = None
        if trainer.is_global_zero:
            try:
                check_experiment(directory, record, weights=weights)
            except ExperimentMismatchError as error:
                message = str(error)
        message = trainer.strategy.broadcast(message)
        if message is not None:
            raise ExperimentMismatchError(message)

    def _write_summary(self, monitor: str | None, mode: str) -> None:
        assert self.branches_dir is not None and self.fork is not None
        rows = [
            {column: _csv_value(result.get(column)) for column in SUMMARY_COLUMNS} for result in self.results
        ]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write_text(self.branches_dir / "summary.csv", buffer.getvalue())
        summary = {
            "fork_epoch": self.fork.epoch,
            "fork_global_step": self.fork.global_step,
            "fork_fingerprint": self.fork.fingerprint,
            "monitor": monitor,
            "mode": mode,
            "pruning_fn": self.pruning_fn,
            "seed": self.seed,
            "branches": [_jsonable(result) for result in self.results],
        }
        _atomic_write_text(self.branches_dir / "summary.json", json.dumps(summary, indent=2))

    def summary_table(self) -> str:
        """The results as a text table (what ``verbose`` prints)."""
        monitor = next((r.get("monitor") for r in self.results if r.get("monitor")), None) or "metric"
        # The path-exact columns only when some branch has them (connectivity="weights").
        with_path = any(r.get(column) is not None for r in self.results for column in PATH_COLUMNS)
        path_header = ("E_path fork", "E~path fork", "E_path end", "E~path end") if with_path else ()
        header = (
            "branch",
            "amount",
            "params",
            "E fork",
            "E~ fork",
            "E end",
            "E~ end",
            *path_header,
            f"final {monitor}",
            "best",
            "ep->99%",
            "time s",
            "status",
        )
        rows = [header]
        for r in self.results:
            rows.append(
                (
                    r["name"],
                    f"{percent(r['amount'])}%",
                    _fmt(r.get("parameters")),
                    _fmt(r.get("E_fork")),
                    _fmt(r.get("relative_E_fork")),
                    _fmt(r.get("E_end")),
                    _fmt(r.get("relative_E_end")),
                    *([_fmt(r.get(column)) for column in PATH_COLUMNS] if with_path else []),
                    _fmt(r.get("final")),
                    _fmt(r.get("best")),
                    _fmt(r.get("epochs_to_99")),
                    _fmt(r.get("wall_time_s")),
                    r.get("status", "") + (" (resumed)" if r.get("resumed") else ""),
                )
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        failed = [r for r in self.results if r.get("status") == "failed"]
        lines += [f"{r['name']} failed: {r.get('error')}" for r in failed]
        return "Prune and branch: branches forked after epoch " + f"{self.branch_epoch}\n" + "\n".join(lines)

    # ---- checkpointing -----------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"results": [dict(result) for result in self.results], "forked": self._forked}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = [dict(result) for result in state_dict.get("results", [])]
        self._forked = bool(state_dict.get("forked", False))


class _BranchRecorder(Callback):
    """Inside one branch: measures E at the fork, follows the monitored metric, catches a non-finite loss."""

    def __init__(
        self, owner: PruneAndBranchCallback, spec: BranchSpec, monitor: str | None, mode: str
    ) -> None:
        self.owner = owner
        self.spec = spec
        self.monitor = monitor
        self.mode = mode
        self.emergence_callback: EmergenceCallback | None = None
        self.values: dict[int, float] = {}  # epochs completed -> monitored value
        self.set_up_in = 0.0
        self.fit_started: float | None = None
        self.train_started: float | None = None
        self.final_epoch: int | None = None
        self._nonfinite: Tensor | None = None
        self._summary_logged = False
        self._masked: MaskedTraining | None = None
        self._step_hooks: list[Any] = []

    @property
    @override
    def state_key(self) -> str:
        return f"_BranchRecorder[{self.spec.name}]"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_started = time.perf_counter()
        _check_optimized_tensors(trainer, pl_module)
        if self.owner.fast_masks and not any(isinstance(cb, ModelPruning) for cb in trainer.callbacks):
            masked = MaskedTraining(pl_module)
            if masked.tensors:
                self._masked = masked.open()
                # After every step, whoever calls it (manual optimization, DDP): the masked entries stay
                # zero. Skipped only where a built-in element-wise optimizer is sure to see the gradients
                # as `on_before_optimizer_step` left them masked: then it keeps the zeros by itself.
                masked_until_step = _gradients_stay_masked_until_step(trainer, pl_module, self)
                self._step_hooks = [
                    optimizer.register_step_post_hook(lambda *_: masked.mask_weights())
                    for optimizer in trainer.optimizers
                    if not (masked_until_step and keeps_masked_weights_at_zero(optimizer))
                ]
        fork_state = self.owner.fork_state
        if fork_state is not None and self.spec.kind in ("control", "pruned"):
            # Random controls are new networks: the parent's momentum would push them along its own path.
            _load_fork_state(trainer, pl_module, fork_state)
        if self.emergence_callback is not None:
            _measure_at_fork(self.emergence_callback, trainer, pl_module, epoch=trainer.current_epoch)
        if fork_state is not None:
            restore_rng(fork_state.rng)  # last: the first batch draws exactly as the unforked run's would

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
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._masked is not None:
            self._masked.mask_gradients()  # after DDP's all-reduce, before clipping: torch.prune's gradients

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _validates(trainer):
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
        self._restore_masks()
        self._log_summary(trainer, "finished")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_masks()
        self._log_summary(trainer, "failed")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_masks()

    def _restore_masks(self) -> None:
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = []
        if self._masked is not None:
            self._masked.close()
            self._masked = None

    def _record(self, trainer: pl.Trainer) -> None:
        value = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if value is not None:
            self.values[trainer.current_epoch + 1] = float(value)
        self.final_epoch = trainer.current_epoch + 1

    def summary(self) -> dict[str, Any]:
        """The branch's figures for the results table."""
        fork_epoch = self.owner.fork.epoch if self.owner.fork else 0
        epochs = sorted(self.values)
        values = [self.values[e] for e in epochs]
        finite = [v for v in values if math.isfinite(v)]
        best = (max(finite) if self.mode == "max" else min(finite)) if finite else None
        history = self.emergence_callback.history if self.emergence_callback is not None else []
        fork_record = next((r for r in history if r["epoch"] == fork_epoch), None)
        end_record = history[-1] if history and history[-1] is not fork_record else fork_record
        summary = {
            "E_fork": fork_record["E"] if fork_record else None,
            "relative_E_fork": fork_record["relative"] if fork_record else None,
            "log10_E_fork": fork_record["log10_E"] if fork_record else None,
            "E_end": end_record["E"] if end_record else None,
            "relative_E_end": end_record["relative"] if end_record else None,
            "log10_E_end": end_record["log10_E"] if end_record else None,
            # Path-exact E on the weights' graph (pruned weights are no edge): connectivity="weights" only.
            "E_path_fork": fork_record.get("E_path") if fork_record else None,
            "relative_E_path_fork": fork_record.get("relative_path") if fork_record else None,
            "E_path_end": end_record.get("E_path") if end_record else None,
            "relative_E_path_end": end_record.get("relative_path") if end_record else None,
            "final": values[-1] if values else None,
            "best": best,
            "best_epoch": epochs[values.index(best)] if best is not None else None,
            "epochs_to_99": epochs_to_fraction_of_final(values, 0.99, self.mode) if values else None,
            "epochs": (self.final_epoch - fork_epoch) if self.final_epoch is not None else 0,
            "setup_s": round(self.set_up_in + (self.train_started - self.fit_started), 3)
            if self.train_started is not None and self.fit_started is not None
            else None,
            "history": {
                "epoch": epochs,
                "value": values,
                "E": [[r["epoch"], r["E"]] for r in history],
                "relative_E": [[r["epoch"], r["relative"]] for r in history],
            },
        }
        return summary

    def _log_summary(self, trainer: pl.Trainer, status: str) -> None:
        """The branch's hyperparameters and final figures, for TensorBoard's hparams table (rank zero)."""
        if self._summary_logged or not trainer.is_global_zero:
            return
        self._summary_logged = True
        summary = self.summary()
        metrics = {
            f"branch/final_{self.monitor or 'metric'}": summary["final"],
            f"branch/best_{self.monitor or 'metric'}": summary["best"],
            "branch/epochs_to_99": summary["epochs_to_99"],
            "branch/parameters": count_parameters(trainer.lightning_module),
            "branch/E_end": summary["E_end"],
            "branch/relative_E_end": summary["relative_E_end"],
        }
        if self.emergence_callback is not None and self.emergence_callback.connectivity == "weights":
            # Every branch of the run has these keys (NaN where the model could not be traced).
            metrics["branch/E_path_end"] = summary["E_path_end"]
            metrics["branch/relative_E_path_end"] = summary["relative_E_path_end"]
        metrics = {key: _metric_value(value) for key, value in metrics.items()}
        params = {
            "branch/name": self.spec.name,
            "branch/kind": self.spec.kind,
            "branch/amount": self.spec.amount,
            "branch/fork_epoch": self.owner.fork.epoch if self.owner.fork else -1,
            "branch/pruning_fn": self.owner.pruning_fn,
            "branch/status": status,
        }
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=trainer.global_step)
                if isinstance(logger, TensorBoardLogger):
                    write_hparams_entry(logger, {**flat_hparams(logger.hparams), **params}, metrics)
                else:
                    logger.log_hyperparams(params)
            except Exception as error:  # noqa: BLE001 - the summary must not hide the branch's own error
                rank_zero_warn(
                    f"PruneAndBranchCallback: could not log the summary of {self.spec.name!r}: {error}"
                )


# ---- helpers: the fork ----------------------------------------------------------------------
def _valid_norm(norm: Any) -> bool:
    """Whether ``norm`` is a ``p`` that ``torch.norm`` takes (what ``prune.ln_structured`` passes on)."""
    if isinstance(norm, str):
        return norm in ("fro", "nuc")
    return not isinstance(norm, bool) and isinstance(norm, (int, float)) and not math.isnan(norm)


def _gradients_stay_masked_until_step(
    trainer: pl.Trainer, pl_module: pl.LightningModule, recorder: Callback
) -> bool:
    """Whether the gradients masked in ``recorder.on_before_optimizer_step`` reach ``optimizer.step`` unchanged.

    Not so with manual optimization (a raw optimizer skips the hook), a module that overrides
    ``optimizer_step`` or ``on_before_optimizer_step`` (which runs after the callbacks'), or another
    callback that overrides ``on_before_optimizer_step`` (it may run after ours). Clipping only scales.
    """
    if not pl_module.automatic_optimization:
        return False
    if is_overridden("on_before_optimizer_step", pl_module) or is_overridden("optimizer_step", pl_module):
        return False
    return not any(
        callback is not recorder and is_overridden("on_before_optimizer_step", callback, parent=Callback)
        for callback in trainer.callbacks
    )


def _check_strategy(strategy: Any) -> None:
    if isinstance(strategy, SingleDeviceStrategy):
        return
    if isinstance(strategy, DDPStrategy) and getattr(strategy, "_start_method", "popen") == "popen":
        return
    name = type(strategy).__name__
    if isinstance(strategy, DDPStrategy):
        name += f"(start_method={strategy._start_method!r})"
    raise ValueError(
        f"PruneAndBranchCallback runs the branches with the parent's strategy, which must be single-device or "
        f"`strategy='ddp'` (one process per device, launched by Lightning or torchrun), got {name}; "
        "spawned processes cannot hand the branches' results back. Use `strategy='ddp'`, or name the branches' "
        "strategy with `trainer_kwargs={'strategy': ...}`."
    )


def _fresh_strategy(strategy: Any) -> Any:
    """An unconnected strategy like the parent's (which is bound to the parent trainer)."""
    if isinstance(strategy, DDPStrategy):
        # The process group exists already: the new strategy finds it and launches nothing,
        # since Lightning has set LOCAL_RANK in every process by now.
        return DDPStrategy(
            ddp_comm_state=strategy._ddp_comm_state,
            ddp_comm_hook=strategy._ddp_comm_hook,
            ddp_comm_wrapper=strategy._ddp_comm_wrapper,
            model_averaging_period=strategy._model_averaging_period,
            process_group_backend=strategy._process_group_backend,
            timeout=strategy._timeout,
            start_method="popen",
            **strategy._ddp_kwargs,
        )
    return "auto"


def _copy_module(pl_module: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of the model, without the trainer (LightningModule drops it) or stale caches."""
    model = copy.deepcopy(pl_module)
    # `self.log` finds logged torchmetrics by id(); the copied cache holds the parent's ids.
    if hasattr(model, "_metric_attributes"):
        model._metric_attributes = None
    return model


def _continue_from(trainer: pl.Trainer, fork: ForkPoint) -> None:
    """Sets a fresh trainer's epoch and step counters to the parent's, so the branch's logs continue its axes."""
    fit_loop = trainer.fit_loop
    for tracker in (fit_loop.epoch_progress.total, fit_loop.epoch_progress.current):
        tracker.ready = tracker.started = tracker.processed = tracker.completed = fork.epoch
    epoch_loop = fit_loop.epoch_loop
    epoch_loop._batches_that_stepped = fork.batches_that_stepped
    step = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
    step.ready = step.completed = fork.global_step
    manual = epoch_loop.manual_optimization.optim_step_progress.total
    manual.ready = manual.completed = fork.global_step


def _measure_at_fork(
    callback: EmergenceCallback, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int
) -> None:
    """The branch's first measurement, recorded and logged at the fork epoch.

    EmergenceCallback's own start-of-training measurement would be "before training" at epoch 0,
    wrong for a branch that continues a trained model at ``epoch``; so the branch's copy has
    ``measure_at_start=False`` and this takes its place (``measure_now`` never stops the branch).
    """
    callback.measure_now(trainer, pl_module, epoch=epoch, before_training=False, log=True)


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


def _val_check_interval(trainer: pl.Trainer) -> Any:
    seconds = getattr(trainer, "_val_check_time_interval", None)
    if seconds:
        return datetime.timedelta(seconds=seconds)
    return getattr(trainer, "val_check_interval", 1.0)


def _validates(trainer: pl.Trainer) -> bool:
    return bool(trainer.enable_validation and sum(trainer.num_val_batches or [0]) > 0)


# ---- helpers: fresh callbacks ---------------------------------------------------------------
def _template(callback: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callback | None:
    """A copy of ``callback`` detached from this trainer and model, or None for callbacks branches don't get."""
    if isinstance(callback, (PruneAndBranchCallback, _BranchRecorder, ModelSummary)):
        return None
    # Deep-copy the callback's own state, not the trainer, the model or the data it points at.
    memo: dict[int, Any] = {id(trainer): None, id(pl_module): None}
    for module in pl_module.modules():
        memo[id(module)] = None
    for tensor in (*pl_module.parameters(), *pl_module.buffers()):
        memo[id(tensor)] = None
    for logger in trainer.loggers:
        memo[id(logger)] = None
    if trainer.datamodule is not None:
        memo[id(trainer.datamodule)] = trainer.datamodule
    # Lightning gives every callback `log` / `log_dict`, bound to the model; the branch trainer rebinds them.
    bound = [
        key
        for key, value in vars(callback).items()
        if isinstance(value, types.MethodType) and (value.__self__ is pl_module or value.__self__ is trainer)
    ]
    try:
        copied = copy.copy(callback)
        for key in bound:
            del copied.__dict__[key]
        return _copy_shared_data(copied, memo)
    except Exception as error:  # noqa: BLE001
        rank_zero_warn(
            f"PruneAndBranchCallback: could not copy {type(callback).__name__} for the branches ({error}); "
            "they run without it."
        )
        return None


def _copy_shared_data(callback: Callback, memo: dict[int, Any] | None = None) -> Callback:
    """A deep copy that shares (does not copy) the dataloaders and data sets the callback holds."""
    memo = dict(memo or {})
    for value in vars(callback).values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, (DataLoader, Dataset, pl.LightningDataModule)):
                memo[id(item)] = item
    return copy.deepcopy(callback, memo)


def _drop_disabled_callbacks(kwargs: dict[str, Any], callbacks: list[Callback]) -> dict[str, Any]:
    """Matches ``enable_progress_bar`` / ``enable_checkpointing`` to the copied callbacks (Lightning requires it)."""
    kwargs = dict(kwargs)
    if kwargs.get("enable_progress_bar") is False:
        callbacks[:] = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    elif "enable_progress_bar" not in kwargs:
        kwargs["enable_progress_bar"] = any(isinstance(cb, ProgressBar) for cb in callbacks)
    if kwargs.get("enable_checkpointing") is False:
        callbacks[:] = [cb for cb in callbacks if not isinstance(cb, Checkpoint)]
    elif "enable_checkpointing" not in kwargs:
        kwargs["enable_checkpointing"] = any(isinstance(cb, Checkpoint) for cb in callbacks)
    if kwargs.get("barebones"):
        for key in ("enable_progress_bar", "enable_checkpointing", "enable_model_summary"):
            kwargs.pop(key, None)
    return kwargs


# ---- helpers: data order --------------------------------------------------------------------
def _generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    found: list[torch.Generator] = []
    stack = list(loaders)
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, DataLoader):
            for owner in (item, item.sampler, getattr(item.batch_sampler, "sampler", None)):
                generator = getattr(owner, "generator", None)
                if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                    found.append(generator)
    return found


def _generator_states(loaders: Iterable[Any]) -> list[tuple[torch.Generator, Tensor]]:
    """The state of every generator the given dataloaders shuffle with, to replay their order per branch."""
    return [(generator, generator.get_state()) for generator in _generators(loaders)]


def _restore_generators(states: list[tuple[torch.Generator, Tensor]]) -> None:
    for generator, state in states:
        generator.set_state(state)


class _quiet_lightning_info:
    """Silences Lightning's info messages (device summary, tips) while a branch trainer is built."""

    NAMES = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

    def __enter__(self) -> None:
        self.loggers = [logging.getLogger(name) for name in self.NAMES]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.WARNING)

    def __exit__(self, *exc_info: object) -> None:
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)


class _preserve_seed_environment:
    """Restores the seed environment variables ``seed_everything`` sets for the branches."""

    KEYS = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")

    def __enter__(self) -> None:
        self.saved = {key: os.environ.get(key) for key in self.KEYS}

    def __exit__(self, *exc_info: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- helpers: files and logs ----------------------------------------------------------------
def _clear_stale_run(run_dir: Path) -> None:
    """Removes what an unfinished earlier run of this branch left, so TensorBoard shows one run."""
    stale = [*run_dir.glob("events.out.tfevents*"), run_dir / RESULT_FILE, run_dir / STATE_DICT_FILE]
    removed = [path for path in stale if path.is_file()]
    for path in removed:
        path.unlink()
    if removed:
        rank_zero_info(
            f"PruneAndBranchCallback: rerunning {run_dir.name}; removed {len(removed)} stale file(s)."
        )


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Tensor):
        return value.tolist()
    return value


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6)) if math.isfinite(value) else str(value)
    return value


def _metric_value(value: Any) -> float:
    """A scalar for the loggers: NaN for None, inf for an exact E beyond float range."""
    if value is None:
        return math.nan
    return emergence_as_float(value) if isinstance(value, int) else float(value)  # E exact, E~ a float


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) < 10**9 else f"{float(value):.3e}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)
