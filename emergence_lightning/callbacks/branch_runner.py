"""Trains each branch from the fork: seeding, data order, failure isolation; and the saved fork.

:class:`BranchRunner` trains branches one after the other in this process, each from
:class:`Fork` (the parent at the fork, live or loaded from ``fork.pt``), each in its own Trainer
(built by a :data:`~emergence_lightning.callbacks.trainer_factory.TrainerFactory`) and its own run
directory. A failing branch is recorded as ``failed`` and the others run, also when its folder
cannot be written. One job at a time trains a branch (its lock file; another job's branch is
refused, naming the holder, and none of its files is touched). :func:`run_saved_branches` runs
branches by name from a saved fork, in another process: one job per branch.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng

from emergence_lightning import _compat
from emergence_lightning.branching import store
from emergence_lightning.branching.fork_state import DataOrder, ForkPoint, ForkState
from emergence_lightning.branching.lock import LOCK_FILE, BranchLockedError, acquire_lock, release_lock
from emergence_lightning.branching.plan import (
    CONTINUING_KINDS,
    PRUNED_KINDS,
    BranchSpec,
    PruningSettings,
    select,
)
from emergence_lightning.branching.result import BranchResult
from emergence_lightning.branching.table import csv_text, summary_table
from emergence_lightning.callbacks.branch_recorder import BranchRecorder
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.loggers import BranchLoggerSpec
from emergence_lightning.callbacks.tensorboard_views import branch_overlay_layout, write_custom_scalars
from emergence_lightning.callbacks.trainer_arguments import processes_of, recorded_trainer_settings
from emergence_lightning.callbacks.trainer_factory import (
    TrainerFactory,
    branch_loggers,
    branch_trainer_kwargs,
    build_trainer,
    continue_from,
    fresh_callbacks,
)
from emergence_lightning.pruning import count_parameters, masks, permanent_state_dict


@dataclass
class Fork:
    """What every branch starts from: the parent at the fork and how it was training."""

    model: pl.LightningModule  # the parent's module at the fork, on the CPU; branches get copies
    point: ForkPoint
    state: ForkState | None  # None: every branch starts a fresh optimizer (``optimizer_state="fresh"``)
    data: dict[str, Any]  # the branches' ``fit`` arguments (empty: the module's own dataloader hooks)
    monitor: str | None
    mode: str
    dense_parameters: int
    order: DataOrder = field(
        default_factory=DataOrder
    )  # the loaders' generators at the fork: data-order replay
    data_sizes: dict[str, Any] = field(
        default_factory=dict
    )  # samples and batch sizes (the experiment record)


@dataclass
class BranchSetup:
    """How branches are built: what the parent's Trainer passes on, and how models are pruned."""

    plan: list[BranchSpec]  # every branch of the experiment, in order (a run may train a few of them)
    pruning: PruningSettings
    settings: dict[str, Any]  # the parent's Trainer arguments (see trainer_factory.parent_settings)
    trainer_kwargs: dict[str, Any]  # the user's overrides
    templates: list[Callback]  # the parent's other callbacks, as before training
    logger_kinds: list[BranchLoggerSpec]  # how to build each branch's loggers like the parent's
    branch_epoch: int
    trainer_factory: TrainerFactory | None = None


class BranchRunner:
    """Trains branches of ``fork`` into ``directory`` (``<run>/branches``); rank zero writes the files.

    ``experiment``: the experiment's id (:func:`~emergence_lightning.branching.store.experiment_id`),
    written into every result. ``strategy``: the parent's (its ``barrier``/``broadcast`` keep DDP
    processes in step), or None in a process of its own.
    """

    def __init__(
        self, fork: Fork, setup: BranchSetup, directory: Path, experiment: str, strategy: Any = None
    ) -> None:
        self.fork = fork
        self.setup = setup
        self.directory = directory
        self.experiment = experiment
        self.strategy = strategy
        self.is_global_zero = strategy is None or strategy.is_global_zero

    def run(
        self, specs: Sequence[BranchSpec], previous: Mapping[str, BranchResult]
    ) -> Iterator[BranchResult]:
        """Yields each branch's result in turn: read back from ``previous`` (resumed), or trained now.

        Raises:
            BranchLockedError: another job trains one of ``specs`` now (in every process, before it trains).
        """
        with _PreserveSeedEnvironment(), isolate_rng():
            for spec in specs:
                if spec.name in previous:
                    result = dataclasses.replace(previous[spec.name], resumed=True)
                else:
                    result = self._run_locked(spec)
                yield result
                self._barrier("prune-and-branch")

    def _run_locked(self, spec: BranchSpec) -> BranchResult:
        """Trains ``spec`` holding its lock (rank zero takes it; every process learns the outcome)."""
        run_dir = self.directory / spec.name
        lock, locked, unwritable = None, None, None
        if self.is_global_zero:
            try:
                lock = acquire_lock(run_dir)
                removed = store.clear_stale_run(run_dir)  # ours now: no other job writes there
                if removed:
                    rank_zero_info(
                        f"PruneAndBranchCallback: rerunning {spec.name}; removed {len(removed)} stale file(s)."
                    )
            except BranchLockedError as error:
                locked = str(error)
            except OSError as error:  # a folder that cannot be written: this branch fails, the others run
                unwritable = f"{type(error).__name__}: {error}"
        if self.strategy is not None:
            locked, unwritable = self.strategy.broadcast((locked, unwritable))
        if locked is not None:
            raise BranchLockedError(locked)
        try:
            if unwritable is not None:
                rank_zero_warn(f"PruneAndBranchCallback: branch {spec.name!r} failed: {unwritable}")
                return self._failed_result(spec, unwritable)
            return self.run_branch(spec)
        finally:
            if lock is not None:
                release_lock(lock)

    def _failed_result(self, spec: BranchSpec, error: str) -> BranchResult:
        """The result of a branch that could not start (its files cannot be written): kept in memory only."""
        result = self._new_result(spec)
        result.update(status="failed", error=error, wall_time_s=0.0)
        return result

    def _new_result(self, spec: BranchSpec) -> BranchResult:
        fork, setup = self.fork, self.setup
        return BranchResult(
            name=spec.name,
            kind=spec.kind,
            amount=spec.amount,
            pruning_fn=setup.pruning.pruning_fn if spec.kind in PRUNED_KINDS else None,
            parameters_dense=fork.dense_parameters,
            monitor=fork.monitor,
            mode=fork.mode,
            fork_epoch=fork.point.epoch,
            log_dir=str(self.directory / spec.name),
            fork_fingerprint=fork.point.fingerprint,
            experiment=self.experiment,
        )

    def run_branch(self, spec: BranchSpec) -> BranchResult:
        """Trains one branch; its result (``status`` "finished" or "failed", never raises for the branch's own error).

        Call it holding the branch's lock (as :meth:`run` does).
        """
        started = time.perf_counter()
        fork, setup = self.fork, self.setup
        self._barrier("prune-and-branch-clear")
        result = self._new_result(spec)
        model: pl.LightningModule | None = None
        recorder: BranchRecorder | None = None
        try:
            if fork.state is None:
                pl.seed_everything(setup.pruning.seed, workers=True, verbose=False)
            model, left = setup.pruning.branch_model(spec, lambda: _copy_module(fork.model))
            if left:
                rank_zero_warn(
                    f"PruneAndBranchCallback: {spec.name}: modules {left!r} have parameters but no "
                    "`reset_parameters()`; they keep their trained values."
                )
            # `pruned_tensors`: qualified names, e.g. `net.0.weight`
            result.update(parameters=count_parameters(model), pruned_tensors=list(masks(model)))
            callbacks = fresh_callbacks(setup.templates, spec.name, self.directory)
            emergence = next((cb for cb in callbacks if isinstance(cb, EmergenceCallback)), None)
            if emergence is not None:
                emergence.measure_at_start = False  # the recorder measures at the fork instead
            recorder = BranchRecorder(
                spec,
                fork.point,
                fork.state if spec.kind in CONTINUING_KINDS else None,  # random controls are new networks
                fork.monitor,
                fork.mode,
                setup.pruning.pruning_fn,
                emergence,
                started,
                fork.order,
            )
            loggers = branch_loggers(setup.logger_kinds, self.directory, spec.name)
            kwargs = branch_trainer_kwargs(
                setup.settings, setup.trainer_kwargs, [*callbacks, recorder], loggers
            )
            branch_trainer = (setup.trainer_factory or build_trainer)(spec, kwargs)
            if not any(callback is recorder for callback in branch_trainer.callbacks):
                raise ValueError(
                    "`trainer_factory` returned a Trainer without the callbacks it was given in `kwargs['callbacks']`; "
                    "pass them on (they include the branch's recorder)."
                )
            continue_from(branch_trainer, fork.point)
            if self.is_global_zero:
                write_custom_scalars(branch_trainer.loggers, branch_overlay_layout(fork.monitor))
            branch_trainer.fit(model, **fork.data)
            status, error = "finished", None
        except Exception as exception:  # noqa: BLE001 - a failing branch must not take the others down
            status, error = "failed", f"{type(exception).__name__}: {exception}"
            rank_zero_warn(f"PruneAndBranchCallback: branch {spec.name!r} failed: {error}")
        if recorder is not None:
            result.update(**recorder.summary())
        result.update(status=status, error=error, wall_time_s=round(time.perf_counter() - started, 3))
        if self.is_global_zero:
            self._save(spec, result, model)
        return result

    def _save(self, spec: BranchSpec, result: BranchResult, model: pl.LightningModule | None) -> None:
        """Writes the branch's weights (with their checksum) and ``result.json``; a write that fails fails the branch."""
        try:
            if result.status == "finished" and model is not None:
                path, checksum = store.save_final_weights(
                    self.directory, spec.name, permanent_state_dict(model)
                )
                result.update(state_dict=str(path), state_dict_sha256=checksum)
            store.write_result(self.directory, result)
        except OSError as error:
            result.update(status="failed", error=f"{type(error).__name__}: {error}", state_dict=None)
            rank_zero_warn(
                f"PruneAndBranchCallback: branch {spec.name!r} failed: its files cannot be written ({error}); "
                "the other branches run."
            )

    def _barrier(self, name: str) -> None:
        if self.strategy is not None:
            self.strategy.barrier(name)


def write_summary(
    directory: Path,
    plan: Sequence[BranchSpec],
    results: Sequence[BranchResult],
    header: Mapping[str, Any],
) -> list[BranchResult]:
    """Writes ``summary.csv``/``summary.json`` over every planned branch with a result, here or on disk.

    Branches trained by other processes (parallel jobs) are merged in from their ``result.json``,
    those of this experiment only (``header["experiment"]``): one summary never mixes settings.
    Returns the merged results in plan order.
    """
    here = {result.name: result for result in results}
    merged = []
    for spec in plan:
        result = here.get(spec.name)
        if result is None:
            found = store.read_result(directory, spec.name)
            result = BranchResult.from_dict(found) if found is not None else None
        if result is not None and result.experiment == header.get("experiment"):
            merged.append(result)
    store.write_summary(directory, csv_text(merged), merged, header)
    return merged


def summary_header(fork: Fork, pruning: PruningSettings, experiment: str) -> dict[str, Any]:
    """What ``summary.json`` records beside the branches (``experiment``: the id every row carries)."""
    return {
        "experiment": experiment,
        "fork_epoch": fork.point.epoch,
        "fork_global_step": fork.point.global_step,
        "fork_fingerprint": fork.point.fingerprint,
        "monitor": fork.monitor,
        "mode": fork.mode,
        "pruning_fn": pruning.pruning_fn,
        "seed": pruning.seed,
    }


# ---- the saved fork: one job per branch ------------------------------------------------------
def fork_package(fork: Fork, setup: BranchSetup, experiment: Mapping[str, Any]) -> dict[str, Any]:
    """What ``fork.pt`` holds: the fork and how branches are built, for :func:`run_saved_branches`."""
    return {"format": store.FORK_FORMAT, "fork": fork, "setup": setup, "experiment": dict(experiment)}


def script_classes(package: Mapping[str, Any]) -> list[str]:
    """Classes in the package defined in the running script (``__main__``), which another program cannot import."""
    fork, setup = package["fork"], package["setup"]
    objects = [fork.model, *fork.data.values(), *setup.templates]
    return sorted({f"__main__.{type(o).__qualname__}" for o in objects if type(o).__module__ == "__main__"})


def run_saved_branches(
    run_dir: str | os.PathLike,
    names: Iterable[str] | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    trainer_factory: TrainerFactory | None = None,
    resume: bool = True,
    verbose: bool = True,
) -> list[BranchResult]:
    """Trains branches by name from the fork a run saved (``<run_dir>/branches/fork.pt``), in this process.

    Each branch writes its run, ``result.json`` and weights beside the others' and the summary is
    rebuilt over every branch finished so far, so one job per branch (a SLURM array, one per GPU)
    and a final ``emergence-lightning report`` give what one process would have.

    Args:
        run_dir: the parent's run directory (holding ``branches/``), or that ``branches`` folder.
        names: the branches to train (``None``: every branch without a finished result).
        trainer_kwargs: Trainer arguments over the saved ones (e.g. ``{"accelerator": "gpu"}``);
            the saved ones train on one device of the parent's accelerator.
        trainer_factory: builds each branch's Trainer (see :data:`TrainerFactory`).
        resume: read back a branch already finished from this fork instead of training it again.
        verbose: print the summary table.

    Returns:
        The results of the branches named, in plan order.
    """
    directory = _fork_directory(Path(run_dir))
    package = store.load_fork(directory)
    fork: Fork = package["fork"]
    setup: BranchSetup = copy.copy(package["setup"])
    setup.trainer_kwargs = {**setup.trainer_kwargs, **dict(trainer_kwargs or {})}
    setup.trainer_factory = trainer_factory or setup.trainer_factory
    record = job_record(package["experiment"], setup)
    store.check_experiment(directory, record)  # this job's Trainer settings against the experiment's
    experiment = store.experiment_id(record)
    valid = [spec.name for spec in setup.plan]
    wanted = None if names is None else list(names)
    unknown = [name for name in wanted or [] if name not in valid]
    if unknown:
        raise ValueError(
            f"`names` holds {unknown!r}, which are no branches of {directory}; the branches are {valid!r}."
        )
    specs = select(setup.plan, wanted)
    header = summary_header(fork, setup.pruning, experiment)
    finished = store.read_finished(directory, specs, experiment, setup.pruning.pruning_fn)
    if wanted is None:
        specs = [spec for spec in specs if spec.name not in finished]
    previous = finished if resume else {}
    runner = BranchRunner(fork, setup, directory, experiment)
    results = []
    for result in runner.run(specs, previous):
        results.append(result)
        merged = write_summary(directory, setup.plan, results, header)
    if verbose and results:
        print(summary_table(merged, setup.branch_epoch))
    return results


def saved_plan(run_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """Every branch of a saved fork and its status (finished, failed, not run); rebuilds the summary files.

    The summary then holds every branch finished from this fork, whichever job trained it: the
    merge step after parallel jobs.
    """
    directory = _fork_directory(Path(run_dir))
    package = store.load_fork(directory)
    fork: Fork = package["fork"]
    setup: BranchSetup = package["setup"]
    experiment = store.experiment_id(package["experiment"])
    found, results = [], []
    for spec in setup.plan:
        if (directory / spec.name / LOCK_FILE).is_file():
            found.append((spec.name, "running (locked)"))
            continue
        result = store.read_result(directory, spec.name, warn=True)
        if result is None or result.get("experiment") != experiment:
            found.append((spec.name, "not run"))
        elif result.get("status") == "finished" and not store.verified_weights(directory, spec.name, result):
            found.append((spec.name, f"corrupt ({store.STATE_DICT_FILE} fails its checksum; reruns)"))
        else:
            found.append((spec.name, str(result.get("status"))))
            results.append(BranchResult.from_dict(result))
    write_summary(directory, setup.plan, results, summary_header(fork, setup.pruning, experiment))
    return found


def job_record(recorded: Mapping[str, Any], setup: BranchSetup) -> dict[str, Any]:
    """The experiment record of a job that runs saved branches with ``setup`` (its own Trainer settings)."""
    kwargs = {**setup.settings, **setup.trainer_kwargs}
    settings = dict(recorded.get("settings") or {})
    settings["trainer"] = recorded_trainer_settings(kwargs, processes_of(kwargs))
    return {**dict(recorded), "settings": store.experiment_record(None, {}, settings)["settings"]}


def _fork_directory(directory: Path) -> Path:
    """``run_dir/branches`` when it holds the fork, else ``run_dir`` itself (given the branches folder)."""
    return directory / "branches" if (directory / "branches" / store.FORK_FILE).is_file() else directory


# ---- helpers ---------------------------------------------------------------------------------
def _copy_module(pl_module: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of the model, without the trainer (LightningModule drops it) or stale caches."""
    model = copy.deepcopy(pl_module)
    # `self.log` finds logged torchmetrics by id(); the copied cache holds the parent's ids.
    (cache,) = _compat.LIGHTNING_MODULE_ATTRIBUTES
    if hasattr(model, cache):
        setattr(model, cache, None)
    return model


class _PreserveSeedEnvironment:
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
