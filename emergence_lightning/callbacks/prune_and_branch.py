"""PruneAndBranchCallback: fork a trained model into a control and pruned branches, train and compare them.

The paper's section 4 experiment for any LightningModule: train ``branch_epoch`` epochs, copy the
model, magnitude-prune the copies, train every copy (the unpruned control included) for the
remaining epochs under identical conditions, and compare emergence, accuracy and convergence.

Glue only: the parent ``fit`` stops itself once ``branch_epoch`` epochs have finished; in
``on_fit_end`` (the parent's strategy is torn down, its process group, if any, still up) this
captures the fork and hands it to :class:`~emergence_lightning.callbacks.branch_runner.BranchRunner`,
which trains each branch in a new ``Trainer`` built from the parent's settings
(:mod:`~emergence_lightning.callbacks.trainer_factory`). Under DDP every process runs the same
branches in the same order, reusing the initialised process group. See ``docs/prune-and-branch.md``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from emergence_lightning.branching import store
from emergence_lightning.branching.fork_state import (
    ForkPoint,
    ForkState,
    capture_optimizer,
    capture_rng,
    capture_schedulers,
    data_order,
)
from emergence_lightning.branching.monitor import metric_figures, pick_monitor
from emergence_lightning.branching.plan import (
    PARENT,
    BranchSpec,
    PruningSettings,
    check_amounts,
    check_epochs,
    check_only,
    plan_branches,
    select,
)
from emergence_lightning.branching.result import BranchResult
from emergence_lightning.branching.table import summary_table
from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.callbacks.branch_experiment import (
    check_experiment_everywhere,
    experiment_settings,
    fork_data_sizes,
)
from emergence_lightning.callbacks.branch_recorder import BranchRecorder
from emergence_lightning.callbacks.branch_runner import (
    BranchRunner,
    BranchSetup,
    Fork,
    fork_package,
    script_classes,
    summary_header,
    write_summary,
)
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.tensorboard_views import run_hparams, summary_metrics, write_run_summary
from emergence_lightning.callbacks.trainer_factory import (
    TrainerFactory,
    callback_templates,
    check_branch_trainer,
    check_lightning_attributes,
    check_strategy,
    check_trainer_kwargs,
    fork_point,
    logger_kinds,
    parent_data,
    parent_settings,
    portable_settings,
    skip_placeholder_hp_metric,
)
from emergence_lightning.measure import check_flags
from emergence_lightning.measure.arguments import is_integer
from emergence_lightning.pruning import STRUCTURED_PRUNING_FUNCTIONS, count_parameters, find_prunable
from emergence_lightning.pruning.arguments import check_pruning_dim

#: What a branch starts with besides the weights: the parent's optimizer, scheduler and RNG state, or fresh ones.
OPTIMIZER_STATES = ("continue", "fresh")


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
        optimizer_state: ``"continue"`` (default): the control and pruned branches load the parent's
            optimizer and LR scheduler state and continue its global RNG, as "identical copies" that
            "continue training"; random controls, new networks, start a fresh optimizer.
            ``"fresh"``: every branch calls ``configure_optimizers`` afresh (momentum and schedule
            restart at the fork) and is seeded with ``seed``.
        only: names of the branches to train at the fork (``["pruned-50"]``); ``None``: all. The
            fork is saved (``branches/fork.pt``) either way, so the others can run later or elsewhere:
            ``emergence-lightning branch RUN_DIR --name pruned-30`` (one job per branch).
        trainer_factory: ``factory(spec, kwargs) -> Trainer`` builds each branch's Trainer from the
            arguments taken from the parent (``kwargs``, with ``callbacks`` and ``logger`` to pass on);
            ``None``: ``Trainer(**kwargs)``.

    Example::

        trainer = Trainer(max_epochs=20, logger=TensorBoardLogger("runs"),
                          callbacks=[EmergenceCallback(), PruneAndBranchCallback(branch_epoch=5)])
        trainer.fit(model, datamodule=dm)
        callback.results   # one BranchResult per branch: control, pruned-30, pruned-50, pruned-70
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
        optimizer_state: str = "continue",
        only: Sequence[str] | None = None,
        trainer_factory: TrainerFactory | None = None,
    ) -> None:
        if not is_integer(branch_epoch) or branch_epoch < 1:
            raise ValueError(f"`branch_epoch` must be an int >= 1, got {branch_epoch!r}.")
        branch_epoch = int(branch_epoch)  # NumPy ints too
        self.amounts = check_amounts(amounts)
        #: How the pruned branches are pruned and seeded (its construction checks the arguments and the seed).
        self.pruning = PruningSettings(
            pruning_fn=pruning_fn,
            use_global_unstructured=use_global_unstructured,
            parameter_names=parameter_names,
            modules=modules,
            pruning_dim=pruning_dim,
            pruning_norm=pruning_norm,
            seed=seed,
        )
        _check_data_arguments(branch_datamodule, branch_train_dataloaders, branch_val_dataloaders)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"`monitor` must be None or a metric name, got {monitor!r}.")
        if mode not in (None, "min", "max"):
            raise ValueError(f"`mode` must be 'min', 'max' or None, got {mode!r}.")
        if optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"`optimizer_state` must be one of {OPTIMIZER_STATES}, got {optimizer_state!r}.")
        check_flags(random_controls=random_controls, resume=resume, verbose=verbose)
        if trainer_factory is not None and not callable(trainer_factory):
            raise TypeError(
                f"`trainer_factory` must be callable as factory(spec, kwargs), got {trainer_factory!r}."
            )
        self.trainer_kwargs = check_trainer_kwargs(trainer_kwargs)
        self.branch_epoch = branch_epoch
        self.random_controls = bool(random_controls)
        self.only = check_only(only, plan_branches(self.amounts, self.random_controls))
        self.branch_datamodule = branch_datamodule
        self.branch_train_dataloaders = branch_train_dataloaders
        self.branch_val_dataloaders = branch_val_dataloaders
        self.monitor = monitor
        self.mode = mode
        self.resume = resume
        self.verbose = verbose
        self.optimizer_state = optimizer_state
        self.trainer_factory = trainer_factory
        self._state_key = self._generate_state_key(
            branch_epoch=branch_epoch, amounts=self.amounts, pruning_fn=pruning_fn
        )
        #: One BranchResult per branch, in the order they ran (``result.name`` or ``result["name"]``).
        self.results: list[BranchResult] = []
        #: The directory holding the branch runs and the summary, once known.
        self.branches_dir: Path | None = None
        #: Where the parent stopped (epoch, step, weights' fingerprint), once forked.
        self.fork: ForkPoint | None = None
        self._templates: list[Callback] = []
        self._parent_metrics: dict[int, dict[str, float]] = {}  # epochs completed -> the parent's metrics
        self._saved: Fork | None = None  # a saved fork this run starts from (``only``, fork.pt present)
        self._forked = False

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @property
    def branches(self) -> list[BranchSpec]:
        """Every branch of the experiment, in the order they run (``only`` trains a few of them)."""
        return plan_branches(self.amounts, self.random_controls)

    # ---- set-up: check the trainer and model, remember fresh callbacks ------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_epochs(self.branch_epoch, trainer.max_epochs, trainer.min_epochs, self.trainer_kwargs)
        # Names, parameter names, "nothing to prune" and the pruning dimension are checked on the real model
        # now, not at the fork.
        targets = find_prunable(
            pl_module,
            self.pruning.modules,
            self.pruning.parameter_names,
            skip_last=self.pruning.pruning_fn in STRUCTURED_PRUNING_FUNCTIONS,
        )
        check_pruning_dim(targets, self.pruning.pruning_fn, self.pruning.pruning_dim)
        if "strategy" not in self.trainer_kwargs:
            check_strategy(trainer.strategy)
        check_lightning_attributes(trainer)  # before the parent trains, not at the fork
        if self.trainer_factory is None:
            check_branch_trainer(parent_settings(trainer), self.trainer_kwargs)
        # Before training the parent: a directory holding another model's or setting's branches is refused now.
        record = store.experiment_record(
            None, store.architecture(pl_module), self._experiment_settings(trainer)
        )
        check_experiment_everywhere(trainer, _branches_dir(trainer), record, weights=False)
        self._parent_metrics = {}
        skip_placeholder_hp_metric(trainer)
        if not trainer.loggers:
            rank_zero_warn(
                "PruneAndBranchCallback: the Trainer has no logger, so the branches log nothing; results go to "
                f"{os.path.join(trainer.default_root_dir, 'branches')}."
            )
        # Copies of the other callbacks as they are before training, to hand each branch a fresh one.
        self._templates = callback_templates(
            trainer, pl_module, skip=(PruneAndBranchCallback, BranchRecorder)
        )
        self._saved = None
        if self.only is not None and (_branches_dir(trainer) / store.FORK_FILE).is_file():
            # A job for a few branches of an experiment whose fork is saved: start from it, don't retrain the parent.
            self._saved = store.load_fork(_branches_dir(trainer))[
                "fork"
            ]  # an unreadable one: an error naming it
            for callback in trainer.callbacks:
                if isinstance(callback, EmergenceCallback):
                    callback.measure_at_start = False  # the parent's run has its curve already
            rank_zero_info(
                f"PruneAndBranchCallback: starting {list(self.only)} from the fork saved in {_branches_dir(trainer)}; "
                "the parent does not train again."
            )

    # ---- the parent: stop at the fork --------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved is not None:
            trainer.should_stop = True  # the fork is saved: the branches start from it
            return
        if trainer.current_epoch > self.branch_epoch:
            raise RuntimeError(
                f"PruneAndBranchCallback: training resumed at epoch {trainer.current_epoch}, past `branch_epoch`="
                f"{self.branch_epoch}; the weights at the fork are gone. Resume from a checkpoint of epoch "
                f"{self.branch_epoch} or earlier."
            )
        if trainer.current_epoch == self.branch_epoch:
            trainer.should_stop = True  # resumed exactly at the fork: branch right away

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record_parent(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not state.runs_validation(trainer):
            self._record_parent(trainer)
        if trainer.current_epoch + 1 >= self.branch_epoch:
            trainer.should_stop = True

    def _record_parent(self, trainer: pl.Trainer) -> None:
        # The parent's metrics per epoch: its summary row needs the best of a monitor picked only at the fork.
        self._parent_metrics[trainer.current_epoch + 1] = {
            key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1
        }

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._forked:
            return
        if self._saved is not None:
            self._forked = True
            self.run_branches(trainer, pl_module, saved=self._saved)
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
    def run_branches(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, saved: Fork | None = None
    ) -> list[BranchResult]:
        """Forks ``pl_module`` as ``trainer`` left it (or starts from a ``saved`` fork) and trains the branches.

        Trains the branches ``only`` names (all by default); returns :attr:`results`.
        """
        rng = capture_rng()  # first: where the unforked run's next epoch would draw from
        self.branches_dir = directory = _branches_dir(trainer)
        fork = saved if saved is not None else self._capture_fork(trainer, pl_module, rng)
        if saved is not None:
            pl_module.load_state_dict(saved.model.state_dict())  # the module ends this fit as at the fork
        self.fork = fork.point
        record = store.experiment_record(
            fork.point.fingerprint,
            store.architecture(fork.model),
            self._experiment_settings(trainer),
            fork.data_sizes,
        )
        check_experiment_everywhere(trainer, directory, record, weights=True)
        experiment = store.experiment_id(record)
        setup = BranchSetup(
            plan=self.branches,
            pruning=self.pruning,
            settings=parent_settings(trainer),
            trainer_kwargs=self.trainer_kwargs,
            templates=self._templates,
            logger_kinds=logger_kinds(trainer),
            branch_epoch=self.branch_epoch,
            trainer_factory=self.trainer_factory,
        )
        if trainer.is_global_zero and saved is None:
            store.write_experiment(directory, record)
            self._save_fork(directory, fork, setup, record)
            self._log_parent_summary(trainer, fork)
        specs = select(setup.plan, self.only)
        previous = {}
        if self.resume and trainer.is_global_zero:
            previous = store.read_finished(directory, specs, experiment, self.pruning.pruning_fn)
        previous = trainer.strategy.broadcast(previous)  # every process skips the same branches
        self.results = [result for result in self.results if result.name not in {s.name for s in specs}]
        header = summary_header(fork, self.pruning, experiment)
        runner = BranchRunner(fork, setup, directory, experiment, trainer.strategy)
        for result in runner.run(specs, previous):
            self.results.append(result)
            if trainer.is_global_zero:
                write_summary(directory, setup.plan, self.results, header)
        if self.verbose:
            rank_zero_info(self.summary_table())
        rank_zero_info(
            f"PruneAndBranchCallback: {len(specs)} of {len(setup.plan)} branches here; summary in "
            f"{directory / store.SUMMARY_CSV}; the others: `emergence-lightning branch {directory.parent} --name NAME`"
            if len(specs) < len(setup.plan)
            else f"PruneAndBranchCallback: {len(specs)} branches; summary in {directory / store.SUMMARY_CSV}"
        )
        return self.results

    def _capture_fork(self, trainer: pl.Trainer, pl_module: pl.LightningModule, rng: dict[str, Any]) -> Fork:
        """The fork: where the parent stopped, its training state, the data and the metric to compare."""
        point = fork_point(trainer, store.fingerprint(pl_module.state_dict()))
        if self.monitor is None:
            picked = pick_monitor(trainer.callback_metrics)
            monitor, mode = picked if picked else (None, "max")
        else:
            monitor, mode = self.monitor, None
        mode = self.mode or mode or (pick_monitor([str(monitor)]) or (None, "min"))[1]  # accuracy: max
        data = self._data_kwargs(trainer)
        parents_data = not (self.branch_datamodule or self.branch_train_dataloaders)
        state = None
        if self.optimizer_state == "continue":
            state = ForkState(
                optimizers=[capture_optimizer(optimizer, pl_module) for optimizer in trainer.optimizers],
                schedulers=capture_schedulers([config.scheduler for config in trainer.lr_scheduler_configs]),
                rng=rng,
            )
        pl_module.cpu()  # the parent's strategy has moved it back already on GPU; copies start on the host
        return Fork(
            model=pl_module,
            point=point,
            state=state,
            data=data,
            monitor=monitor,
            mode=mode,
            dense_parameters=count_parameters(pl_module),
            order=data_order(data.values(), trainer.train_dataloader if parents_data else None),
            data_sizes=fork_data_sizes(
                trainer, self.branch_datamodule, self.branch_train_dataloaders, self.branch_val_dataloaders
            ),
        )

    def _log_parent_summary(self, trainer: pl.Trainer, fork: Fork) -> None:
        """The parent's end-of-run scalars and HParams row, with the same columns as every branch's."""
        values = {epoch: m[fork.monitor] for epoch, m in self._parent_metrics.items() if fork.monitor in m}
        emergence = next((cb for cb in trainer.callbacks if isinstance(cb, EmergenceCallback)), None)
        records = emergence.records() if emergence is not None else []
        end = records[-1] if records else None
        figures = {
            **metric_figures(values, fork.mode),
            "parameters": fork.dense_parameters,
            **(
                {"E_end": end.E, "log10_E_end": end.log10_E, "relative_E_end": end.relative,
                 "E_path_end": end.E_path, "relative_E_path_end": end.relative_path}
                if end is not None else {}
            ),
        }  # fmt: skip
        path_exact = emergence is not None and emergence.connectivity == "weights"
        params = run_hparams(PARENT, 0.0, fork.point.epoch, "none", "finished")
        metrics = summary_metrics(fork.monitor, figures, path_exact)
        write_run_summary(trainer.loggers, trainer.global_step, params, metrics)

    def _save_fork(self, directory: Path, fork: Fork, setup: BranchSetup, record: dict[str, Any]) -> None:
        """Saves the fork as ``fork.pt``, so any branch can run later or in another job (rank zero)."""
        kwargs = {
            k: v for k, v in setup.trainer_kwargs.items() if not (k == "strategy" and not isinstance(v, str))
        }
        portable = dataclasses.replace(
            setup, settings=portable_settings(setup.settings), trainer_kwargs=kwargs, trainer_factory=None
        )
        package = fork_package(fork, portable, record)
        try:
            store.save_fork(directory, package)
        except (pickle.PicklingError, TypeError, AttributeError, OSError) as error:
            # Nothing the parent trained is lost: the module (and any checkpoint Lightning wrote) stays as it is,
            # and the branches run in this process from it.
            rank_zero_warn(
                f"PruneAndBranchCallback: the fork could not be saved to {directory / store.FORK_FILE} "
                f"({type(error).__name__}: {error}); the branches run in this process from the parent's module, "
                "but not later by name (`emergence-lightning branch`)."
            )
            return
        local = script_classes(package)
        if local:
            rank_zero_warn(
                f"PruneAndBranchCallback: {directory / store.FORK_FILE} refers to classes defined in the script "
                f"({', '.join(local)}): `emergence-lightning branch` cannot import them. Define them in a module, "
                "or run saved branches from the script with `emergence_lightning.callbacks.run_saved_branches`."
            )

    def _data_kwargs(self, trainer: pl.Trainer) -> dict[str, Any]:
        if self.branch_datamodule is not None:
            return {"datamodule": self.branch_datamodule}
        if self.branch_train_dataloaders is not None:
            data = {"train_dataloaders": self.branch_train_dataloaders}
            if self.branch_val_dataloaders is not None:
                data["val_dataloaders"] = self.branch_val_dataloaders
            return data
        return parent_data(trainer)

    def _experiment_settings(self, trainer: pl.Trainer) -> dict[str, Any]:
        """Every setting that changes the branches' numbers (see :func:`~.branch_experiment.experiment_settings`)."""
        data = self.branch_datamodule or self.branch_train_dataloaders
        own = {
            "branch_epoch": self.branch_epoch,
            **dataclasses.asdict(self.pruning),
            "optimizer_state": self.optimizer_state,
            "monitor": self.monitor,
            "mode": self.mode,
            "branch_data": type(data).__name__ if data is not None else None,
        }
        return experiment_settings(trainer, own, self.trainer_kwargs)

    def summary_table(self) -> str:
        """The results as a text table (what ``verbose`` prints)."""
        return summary_table(self.results, self.branch_epoch)

    # ---- checkpointing -----------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"results": [result.to_dict() for result in self.results], "forked": self._forked}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.results = [BranchResult.from_dict(result) for result in state_dict.get("results", [])]
        self._forked = bool(state_dict.get("forked", False))


def _branches_dir(trainer: pl.Trainer) -> Path:
    """``branches/`` beside the parent's TensorBoard or CSV run, else under ``default_root_dir``.

    Never inside an MLflow store or a W&B folder (``trainer.log_dir`` is the first logger's
    ``save_dir`` for those): MLflow reads every folder of its store as an experiment.
    """
    first = trainer.loggers[0] if trainer.loggers else None
    if first is None or isinstance(first, (TensorBoardLogger, CSVLogger)):
        return Path(trainer.log_dir or trainer.default_root_dir) / "branches"
    runs = [logger for logger in trainer.loggers if isinstance(logger, (TensorBoardLogger, CSVLogger))]
    folder = runs[0].log_dir if runs else trainer.default_root_dir
    return Path(trainer.strategy.broadcast(folder)) / "branches"  # rank zero's version folder


def _check_data_arguments(datamodule: Any, train_dataloaders: Any, val_dataloaders: Any) -> None:
    if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
        raise ValueError(
            "Pass either `branch_datamodule` or `branch_train_dataloaders`/`branch_val_dataloaders`, not both; "
            f"got branch_datamodule={type(datamodule).__name__}."
        )
    if val_dataloaders is not None and train_dataloaders is None:
        raise ValueError(
            "`branch_val_dataloaders` needs `branch_train_dataloaders` too, got branch_train_dataloaders=None."
        )
    if datamodule is not None and not isinstance(datamodule, pl.LightningDataModule):
        raise TypeError(
            f"`branch_datamodule` must be a LightningDataModule, got {type(datamodule).__name__}."
        )
