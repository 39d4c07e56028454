"""Trains each branch from the fork: seeding, data order, failure isolation; and the saved fork.

:class:`BranchRunner` trains branches one after the other in this process, each from
:class:`Fork` (the parent at the fork, live or loaded from ``fork.pt``), each in its own Trainer
(built by a :data:`~emergence_lightning.callbacks.trainer_factory.TrainerFactory`) and its own run
directory. A failing branch is recorded as ``failed`` and the others run. :func:`run_saved_branches`
runs branches by name from a saved fork, in another process: one job per branch.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import DataLoader

from emergence_lightning.branching import store
from emergence_lightning.branching.fork_state import ForkPoint, ForkState
from emergence_lightning.branching.plan import (
    CONTINUING_KINDS,
    PRUNED_KINDS,
    BranchSpec,
    PruningSettings,
    select,
)
from emergence_lightning.branching.table import csv_text, summary_table
from emergence_lightning.callbacks.branch_recorder import BranchRecorder
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.loggers import BranchLoggerSpec
from emergence_lightning.callbacks.tensorboard_views import branch_overlay_layout, write_custom_scalars
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
    generators: list[tuple[torch.Generator, Tensor]] = field(default_factory=list)  # data-order replay


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

    ``strategy``: the parent's (its ``barrier``/``broadcast`` keep DDP processes in step), or None
    in a process of its own.
    """

    def __init__(self, fork: Fork, setup: BranchSetup, directory: Path, strategy: Any = None) -> None:
        self.fork = fork
        self.setup = setup
        self.directory = directory
        self.strategy = strategy
        self.is_global_zero = strategy is None or strategy.is_global_zero

    def run(
        self, specs: Sequence[BranchSpec], previous: Mapping[str, dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        """Yields each branch's result in turn: read back from ``previous`` (resumed), or trained now."""
        with _PreserveSeedEnvironment(), isolate_rng():
            for spec in specs:
                if spec.name in previous:
                    result = {**previous[spec.name], "resumed": True}
                else:
                    _restore_generators(
                        self.fork.generators
                    )  # every branch sees the parent's next data order
                    result = self.run_branch(spec)
                yield result
                self._barrier("prune-and-branch")

    def run_branch(self, spec: BranchSpec) -> dict[str, Any]:
        """Trains one branch; its result (``status`` "finished" or "failed", never raises for the branch's own error)."""
        started = time.perf_counter()
        fork, setup = self.fork, self.setup
        run_dir = self.directory / spec.name
        if self.is_global_zero:
            removed = store.clear_stale_run(run_dir)
            if removed:
                rank_zero_info(
                    f"PruneAndBranchCallback: rerunning {spec.name}; removed {len(removed)} stale file(s)."
                )
        self._barrier("prune-and-branch-clear")
        result: dict[str, Any] = {
            "name": spec.name,
            "kind": spec.kind,
            "amount": spec.amount,
            "pruning_fn": setup.pruning.pruning_fn if spec.kind in PRUNED_KINDS else None,
            "parameters": None,
            "parameters_dense": fork.dense_parameters,
            "monitor": fork.monitor,
            "mode": fork.mode,
            "fork_epoch": fork.point.epoch,
            "log_dir": str(run_dir),
            "fork_fingerprint": fork.point.fingerprint,
            "resumed": False,
        }
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
            result["parameters"] = count_parameters(model)
            result["pruned_tensors"] = list(masks(model))  # qualified names, e.g. `net.0.weight`
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
            result.update(recorder.summary())
        result.update(status=status, error=error, wall_time_s=round(time.perf_counter() - started, 3))
        result["state_dict"] = None
        if status == "finished" and model is not None and self.is_global_zero:
            result["state_dict"] = str(
                store.save_final_weights(self.directory, spec.name, permanent_state_dict(model))
            )
        if self.is_global_zero:
            store.write_result(self.directory, result)
        return result

    def _barrier(self, name: str) -> None:
        if self.strategy is not None:
            self.strategy.barrier(name)


def write_summary(
    directory: Path,
    plan: Sequence[BranchSpec],
    results: Sequence[Mapping[str, Any]],
    header: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Writes ``summary.csv``/``summary.json`` over every planned branch with a result, here or on disk.

    Branches trained by other processes (parallel jobs) are merged in from their ``result.json``;
    returns the merged results in plan order.
    """
    here = {result["name"]: dict(result) for result in results}
    merged = []
    for spec in plan:
        result = here.get(spec.name) or store.read_result(directory, spec.name)
        if result is not None and result.get("fork_fingerprint") == header.get("fork_fingerprint"):
            merged.append(result)
    store.write_summary(directory, csv_text(merged), merged, header)
    return merged


def summary_header(fork: Fork, pruning: PruningSettings) -> dict[str, Any]:
    """What ``summary.json`` records beside the branches."""
    return {
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
    return {"format": 1, "fork": fork, "setup": setup, "experiment": dict(experiment)}


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
) -> list[dict[str, Any]]:
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
    store.check_experiment(directory, package["experiment"])
    valid = [spec.name for spec in setup.plan]
    wanted = None if names is None else list(names)
    unknown = [name for name in wanted or [] if name not in valid]
    if unknown:
        raise ValueError(
            f"`names` holds {unknown!r}, which are no branches of {directory}; the branches are {valid!r}."
        )
    specs = select(setup.plan, wanted)
    header = summary_header(fork, setup.pruning)
    finished = store.read_finished(
        directory, specs, fork.point.fingerprint, fork.point.epoch, setup.pruning.pruning_fn
    )
    if wanted is None:
        specs = [spec for spec in specs if spec.name not in finished]
    previous = finished if resume else {}
    runner = BranchRunner(fork, setup, directory)
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
    found, results = [], []
    for spec in setup.plan:
        result = store.read_result(directory, spec.name)
        if result is None or result.get("fork_fingerprint") != fork.point.fingerprint:
            found.append((spec.name, "not run"))
        else:
            found.append((spec.name, str(result.get("status"))))
            results.append(result)
    write_summary(directory, setup.plan, results, summary_header(fork, setup.pruning))
    return found


def _fork_directory(directory: Path) -> Path:
    """``run_dir/branches`` when it holds the fork, else ``run_dir`` itself (given the branches folder)."""
    return directory / "branches" if (directory / "branches" / store.FORK_FILE).is_file() else directory


# ---- helpers ---------------------------------------------------------------------------------
def _copy_module(pl_module: pl.LightningModule) -> pl.LightningModule:
    """A deep copy of the model, without the trainer (LightningModule drops it) or stale caches."""
    model = copy.deepcopy(pl_module)
    # `self.log` finds logged torchmetrics by id(); the copied cache holds the parent's ids.
    if hasattr(model, "_metric_attributes"):
        model._metric_attributes = None
    return model


def generator_states(loaders: Iterable[Any]) -> list[tuple[torch.Generator, Tensor]]:
    """The state of every generator the given dataloaders shuffle with, to replay their order per branch."""
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
    return [(generator, generator.get_state()) for generator in found]


def _restore_generators(states: list[tuple[torch.Generator, Tensor]]) -> None:
    for generator, state in states:
        generator.set_state(state)


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
