"""Branch Trainers built from the parent's: THE one module that reads a parent Trainer's settings.

Lightning offers no public way to copy a Trainer's settings, to tell a fresh Trainer where a fit
stopped, or to find the dataloaders passed to ``fit``; the few private attributes this needs are
listed in :data:`PRIVATE_ATTRIBUTES` and checked by :func:`check_lightning_attributes` (in the
callback's ``setup`` and in a test), which fails loudly, naming the attribute, on a Lightning
version that moved one. A user who would rather build branch Trainers themselves passes
``trainer_factory`` (see :data:`TrainerFactory`).
"""

from __future__ import annotations

import copy
import datetime
import inspect
import logging
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import (
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from emergence_lightning import _compat
from emergence_lightning.branching.fork_state import ForkPoint
from emergence_lightning.branching.plan import BranchSpec
from emergence_lightning.callbacks.loggers import (
    KINDS,
    BranchLoggerSpec,
    build_branch_logger,
    parent_logger_spec,
)
from emergence_lightning.callbacks.trainer_arguments import checked_number, global_flags, restore_global_flags

#: Builds one branch's Trainer: ``factory(spec, kwargs) -> Trainer``. ``kwargs`` are the Trainer
#: arguments taken from the parent (and ``trainer_kwargs``), with ``callbacks`` (fresh copies of the
#: parent's, plus the branch's recorder: pass them on) and ``logger``; change what you like.
TrainerFactory = Callable[[BranchSpec, dict[str, Any]], pl.Trainer]

#: Trainer arguments a branch takes from the callback, never from `trainer_kwargs`.
RESERVED_TRAINER_KWARGS = ("callbacks", "logger")

#: Private Lightning attributes read (or, for the progress counters, written) here, by the class holding
#: them; the one list is in :mod:`emergence_lightning._compat`.
PRIVATE_ATTRIBUTES = {"Trainer": _compat.TRAINER_ATTRIBUTES, "DDPStrategy": _compat.DDP_STRATEGY_ATTRIBUTES}

#: A private TensorBoardLogger flag: whether Lightning writes its placeholder `hp_metric` HParams entry.
#: Missing on a Lightning version that moved it: a warning (the HParams tab then lacks columns), no error.
TENSORBOARD_PLACEHOLDER_FLAG = "_default_hp_metric"


def check_lightning_attributes(trainer: pl.Trainer, strategy: DDPStrategy | None = None) -> None:
    """Raises a RuntimeError naming the first of :data:`PRIVATE_ATTRIBUTES` this Lightning version lacks."""
    for owner, holder in (("Trainer", trainer), ("DDPStrategy", strategy or DDPStrategy())):
        _compat.check_attributes(
            owner,
            holder,
            PRIVATE_ATTRIBUTES[owner],
            needed_by="PruneAndBranchCallback",
            remedy="Branch Trainers cannot continue the parent's run. Pass `trainer_factory=` to build them "
            "yourself, or use a Lightning version this package supports.",
        )


def check_trainer_kwargs(trainer_kwargs: Any) -> dict[str, Any]:
    """``trainer_kwargs`` as a dict of arguments ``pl.Trainer`` takes, none of :data:`RESERVED_TRAINER_KWARGS`."""
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
        raise TypeError(
            f"`trainer_kwargs` must be a dict of Trainer arguments, got {type(trainer_kwargs).__name__}."
        )
    trainer_kwargs = dict(trainer_kwargs or {})
    unknown = sorted(set(trainer_kwargs) - set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"})
    if unknown:
        raise ValueError(f"`trainer_kwargs` has arguments the Trainer does not take: {unknown!r}.")
    reserved = sorted(set(trainer_kwargs) & set(RESERVED_TRAINER_KWARGS))
    if reserved:
        raise ValueError(
            f"`trainer_kwargs` may not set {reserved!r}: branches get fresh copies of the parent's callbacks "
            "and a logger under the parent's log directory."
        )
    for key, value in trainer_kwargs.items():
        trainer_kwargs[key] = checked_number(key, value)
    return trainer_kwargs


def check_branch_trainer(settings: Mapping[str, Any], trainer_kwargs: Mapping[str, Any]) -> None:
    """Builds (and drops) a branch Trainer from the parent's settings and ``trainer_kwargs``, at ``setup``.

    A combination the Trainer refuses (an unknown accelerator or precision, a strategy it cannot
    build) fails now, before the parent trains, not in every branch at the fork. The global flags
    a Trainer sets as it is built (deterministic algorithms, cuDNN benchmark) are put back: the
    parent's run must not change.

    Raises:
        ValueError: the Trainer refuses the arguments (its message included).
    """
    kwargs = branch_trainer_kwargs(settings, trainer_kwargs, [], [])
    flags = global_flags()
    try:
        with _QuietLightningInfo():
            pl.Trainer(**kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the Trainer refuses, named with the arguments
        raise ValueError(
            f"`trainer_kwargs`={dict(trainer_kwargs)!r} with the parent's settings give no branch Trainer: "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        restore_global_flags(flags)


# ---- the parent's settings -------------------------------------------------------------------
def parent_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """The parent's Trainer arguments, for a branch Trainer that continues where the parent stopped.

    The strategy is the parent's instance, bound to it: :func:`branch_trainer_kwargs` replaces it.
    """
    connector = trainer._accelerator_connector
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
        "use_distributed_sampler": connector.use_distributed_sampler,
        "sync_batchnorm": connector._layer_sync is not None,
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
        for key in ("num_sanity_val_steps", "enable_model_summary", "log_every_n_steps", "detect_anomaly"):
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
    kwargs["strategy"] = trainer.strategy
    return kwargs


def portable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings for a branch run in another process (a saved fork): a strategy by name, one device.

    A job that runs a saved branch is a process of its own, usually one per device: it trains on one
    device of the parent's accelerator unless ``trainer_kwargs`` say otherwise.
    """
    portable = dict(settings)
    portable["strategy"] = "auto"
    portable["devices"] = 1
    portable.pop("num_nodes", None)
    if not isinstance(portable.get("accelerator"), str):
        portable["accelerator"] = "auto"
    return portable


def branch_trainer_kwargs(
    settings: Mapping[str, Any],
    trainer_kwargs: Mapping[str, Any],
    callbacks: list[Callback],
    loggers: list[Any],
) -> dict[str, Any]:
    """The arguments of one branch's Trainer: the parent's settings, then ``trainer_kwargs``, with its callbacks and loggers."""
    kwargs = {**settings, **trainer_kwargs}
    if "strategy" in trainer_kwargs:
        strategy = trainer_kwargs["strategy"]  # the user's instance is copied: it binds to one trainer
        kwargs["strategy"] = strategy if isinstance(strategy, str) else copy.deepcopy(strategy)
    else:
        kwargs["strategy"] = fresh_strategy(settings["strategy"])
    kwargs = _match_enable_flags(kwargs, callbacks)
    return {**kwargs, "callbacks": callbacks, "logger": loggers or False}


def build_trainer(spec: BranchSpec, kwargs: dict[str, Any]) -> pl.Trainer:
    """The default :data:`TrainerFactory`: ``pl.Trainer(**kwargs)``, without Lightning's per-branch device banner."""
    with _QuietLightningInfo():
        return pl.Trainer(**kwargs)


def check_strategy(strategy: Any) -> None:
    """Refuses a parent strategy the branches cannot run under (spawned processes, custom launchers)."""
    if isinstance(strategy, SingleDeviceStrategy):
        return
    if isinstance(strategy, DDPStrategy) and getattr(strategy, "_start_method", "popen") == "popen":
        return
    name = type(strategy).__name__
    if isinstance(strategy, (ModelParallelStrategy, FSDPStrategy)):
        raise ValueError(
            f"PruneAndBranchCallback does not run branches under a sharded strategy, got {name}: "
            "`torch.nn.utils.prune` renames the `weight` parameter that the sharding wraps, and branches would "
            "have to be pruned on the gathered full state and sharded again (not built; see the known limits "
            "in docs/prune-and-branch.md). Use `strategy='ddp'` or one device for a prune-and-branch run; "
            "EmergenceCallback alone measures under FSDP2."
        )
    if isinstance(strategy, DDPStrategy):
        name += f"(start_method={strategy._start_method!r})"
    raise ValueError(
        f"PruneAndBranchCallback runs the branches with the parent's strategy, which must be single-device or "
        f"`strategy='ddp'` (one process per device, launched by Lightning or torchrun), got {name}; "
        "spawned processes cannot hand the branches' results back. Use `strategy='ddp'`, or name the branches' "
        "strategy with `trainer_kwargs={'strategy': ...}`."
    )


def fresh_strategy(strategy: Any) -> Any:
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
    return strategy if isinstance(strategy, str) else "auto"


def _val_check_interval(trainer: pl.Trainer) -> Any:
    seconds = getattr(trainer, "_val_check_time_interval", None)
    if seconds:
        return datetime.timedelta(seconds=seconds)
    return getattr(trainer, "val_check_interval", 1.0)


# ---- where the parent stopped ----------------------------------------------------------------
def fork_point(trainer: pl.Trainer, fingerprint: str) -> ForkPoint:
    """The parent's epoch and step counters as it stops."""
    return ForkPoint(
        epoch=trainer.current_epoch,
        global_step=trainer.global_step,
        batches_that_stepped=trainer.fit_loop.epoch_loop._batches_that_stepped,
        fingerprint=fingerprint,
    )


def continue_from(trainer: pl.Trainer, fork: ForkPoint) -> None:
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


def parent_data(trainer: pl.Trainer) -> dict[str, Any]:
    """The data the parent's ``fit`` was given, as ``fit`` arguments (empty when the module's own hooks give it)."""
    if trainer.datamodule is not None:
        return {"datamodule": trainer.datamodule}
    data = {}
    for key, loop in (
        ("train_dataloaders", trainer.fit_loop),
        ("val_dataloaders", trainer.fit_loop.epoch_loop.val_loop),
    ):
        source = getattr(loop, "_data_source", None)
        instance = getattr(source, "instance", None)
        if instance is not None and not isinstance(instance, (pl.LightningModule, pl.LightningDataModule)):
            data[key] = instance
    return data


# ---- callbacks and loggers -------------------------------------------------------------------
def callback_templates(
    trainer: pl.Trainer, pl_module: pl.LightningModule, skip: tuple[type, ...]
) -> list[Callback]:
    """Copies of the parent's callbacks as they are before training, detached from it (``skip``: left out).

    LightningCLI's ``SaveConfigCallback`` is left out too: it only saves the parent's ``config.yaml``,
    and holds the CLI's parser, which cannot be copied.
    """
    return [
        template
        for callback in trainer.callbacks
        if not isinstance(callback, (*skip, ModelSummary))
        and not _saves_cli_config(callback)
        and (template := _template(callback, trainer, pl_module)) is not None
    ]


def _saves_cli_config(callback: Callback) -> bool:
    try:
        from lightning.pytorch.cli import SaveConfigCallback
    except ImportError:  # the CLI's optional dependencies are missing: no LightningCLI made this trainer
        return False
    return isinstance(callback, SaveConfigCallback)


def fresh_callbacks(templates: list[Callback], name: str, branches_dir: Path | None = None) -> list[Callback]:
    """One branch's own copies of the templates, each checkpoint in the branch's own folder.

    A user-given checkpoint folder gets ``branches/<name>`` inside it; Lightning's default one (which
    follows the first logger, or is one ``checkpoints/`` for every branch without a logger) becomes
    ``<branches_dir>/<name>/checkpoints``, beside the branch's TensorBoard and CSV files, whatever the loggers.
    """
    fresh = []
    for template in templates:
        callback = _copy_shared_data(template)
        if isinstance(callback, ModelCheckpoint):
            if callback.dirpath is not None:
                callback.dirpath = str(Path(callback.dirpath) / "branches" / name)
            elif branches_dir is not None:
                callback.dirpath = str(Path(branches_dir) / name / "checkpoints")
        fresh.append(callback)
    return fresh


def logger_kinds(trainer: pl.Trainer) -> list[BranchLoggerSpec]:
    """How to build the branches' loggers like each of the parent's (a kind they cannot copy: a warning)."""
    specs = []
    for logger in trainer.loggers:
        spec = parent_logger_spec(logger)
        if spec is None:
            rank_zero_warn(
                f"PruneAndBranchCallback: branches are not logged to the parent's {type(logger).__name__}; "
                f"they log to loggers of the kinds {sorted(KINDS)} only.",
            )
        else:
            specs.append(spec)
    return specs


def branch_loggers(kinds: Sequence[BranchLoggerSpec | str], branches_dir: Path, name: str) -> list[Any]:
    """The branch's loggers: TensorBoard and CSV writing to ``<branches_dir>/<name>/``, W&B and MLflow runs."""
    loggers = (build_branch_logger(spec, branches_dir, name) for spec in kinds)
    return [logger for logger in loggers if logger is not None]


def _template(callback: Callback, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callback | None:
    """A copy of ``callback`` detached from this trainer and model, or None when it cannot be copied."""
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


def _match_enable_flags(kwargs: dict[str, Any], callbacks: list[Callback]) -> dict[str, Any]:
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


class _QuietLightningInfo:
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


def skip_placeholder_hp_metric(trainer: pl.Trainer) -> None:
    """Stops Lightning writing its placeholder HParams entry (``hp_metric = -1``) at the start of the parent's fit.

    TensorBoard reads the first entry of a run only, and takes the HParams columns from one run's entry:
    the placeholder (the model's hyperparameters only) would hide the parent's row and every branch column.
    Lightning's ``_log_hyperparams`` runs after the callbacks' ``setup``, so turning it off here is in time.
    """
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        if not hasattr(logger, TENSORBOARD_PLACEHOLDER_FLAG):
            rank_zero_warn(
                "PruneAndBranchCallback: could not turn off this Lightning version's placeholder `hp_metric`; "
                "if the HParams tab shows no branch columns, create the logger with "
                "`TensorBoardLogger(..., default_hp_metric=False)`."
            )
            continue
        setattr(logger, TENSORBOARD_PLACEHOLDER_FLAG, False)
