"""What each kind of Lightning logger gets from the callbacks: settings, and branch runs like the parent's.

- Settings (:func:`log_settings`) go through ``log_hyperparams`` to every logger: CSV's ``hparams.yaml``,
  the W&B config, MLflow params, TensorBoard's HParams entry (the logger's own hyperparameters kept beside).
- A branch of a prune-and-branch experiment logs to loggers of the parent's kinds
  (:func:`parent_logger_spec`, :func:`build_branch_logger`): TensorBoard and CSV under
  ``<run>/branches/<name>/``; a W&B run of its own in the parent's project and group (``job_type="branch"``);
  an MLflow run of its own in the parent's experiment, nested under the parent run (``mlflow.parentRunId``).

A spec is plain data (it is saved in ``fork.pt``), so a saved branch run in another job logs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

#: The parent's logger kinds a branch logs like, by Lightning class.
KINDS: dict[str, type[Logger]] = {
    "tensorboard": TensorBoardLogger,
    "csv": CSVLogger,
    "wandb": WandbLogger,
    "mlflow": MLFlowLogger,
}
#: The tag and config key naming a branch run's parent run (W&B config, MLflow tag).
PARENT_RUN = "branch/parent_run"
#: W&B ``job_type`` of a branch run (the parent keeps its own).
WANDB_JOB_TYPE = "branch"
#: MLflow's own tag that nests a run under its parent in the MLflow UI.
MLFLOW_PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class BranchLoggerSpec:
    """How to build a branch's logger like one of the parent's: the kind and the parent's settings it copies."""

    kind: str  # a key of KINDS
    options: dict[str, Any] = field(default_factory=dict)


# ---- settings ----------------------------------------------------------------------------------
def settings_before_start(loggers: list[Any], settings: dict[str, Any]) -> None:
    """Settings known at ``setup``, before Lightning writes each logger's hyperparameters at the start of a run.

    TensorBoard writes ``hparams.yaml`` once, from its ``hparams``, at that start: ours join them there.
    The other loggers get them through ``log_hyperparams`` (again, completed, by :func:`log_settings`).
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.hparams.update(settings)
        else:
            logger.log_hyperparams(settings)


def log_settings(loggers: list[Any], settings: dict[str, Any]) -> None:
    """``settings`` to every logger's hyperparameters (TensorBoard's HParams entry keeps the model's beside them)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams({**dict(logger.hparams), **settings})
        else:
            logger.log_hyperparams(settings)


# ---- branches like the parent ------------------------------------------------------------------
def parent_logger_spec(logger: Any) -> BranchLoggerSpec | None:
    """The spec of a branch logger like the parent's ``logger``, or None for a kind branches cannot copy.

    The parent's W&B and MLflow runs are read on rank zero, the only process whose loggers write.
    """
    kind = next((kind for kind, cls in KINDS.items() if isinstance(logger, cls)), None)
    if kind in ("wandb", "mlflow") and _rank_zero():
        return BranchLoggerSpec(kind, _wandb_options(logger) if kind == "wandb" else _mlflow_options(logger))
    return None if kind is None else BranchLoggerSpec(kind)


def build_branch_logger(spec: BranchLoggerSpec | str, branches_dir: Path, name: str) -> Logger | None:
    """Branch ``name``'s logger of ``spec``'s kind (a bare kind name: a spec saved by an older version).

    W&B and MLflow runs are made on rank zero only (None elsewhere), where Lightning's loggers write.
    """
    if isinstance(spec, str):
        spec = BranchLoggerSpec(spec)
    if spec.kind not in KINDS:
        raise ValueError(f"unknown branch logger kind {spec.kind!r}; expected one of {sorted(KINDS)}")
    if spec.kind == "tensorboard":
        return TensorBoardLogger(str(branches_dir), name=name, version="", default_hp_metric=False)
    if spec.kind == "csv":
        return CSVLogger(str(branches_dir), name=name, version="")
    if not _rank_zero():
        return None
    if spec.kind == "wandb":
        return _branch_wandb_logger(spec.options, branches_dir, name)
    return _branch_mlflow_logger(spec.options, name)


def _wandb_options(logger: WandbLogger) -> dict[str, Any]:
    run = logger.experiment
    options = {
        "project": logger.name,
        "save_dir": logger.save_dir,
        "entity": getattr(run, "entity", None),
        "group": getattr(run, "group", None),
        "parent_id": getattr(run, "id", None),
        "parent_name": getattr(run, "name", None),
        "mode": "offline" if getattr(run, "offline", False) is True else None,
    }
    return {key: value for key, value in options.items() if isinstance(value, str) and value}


def _branch_wandb_logger(options: dict[str, Any], branches_dir: Path, name: str) -> WandbLogger:
    import wandb

    parent = options.get("parent_name") or options.get("parent_id")
    run = wandb.init(
        project=options.get("project"),
        entity=options.get("entity"),
        dir=options.get("save_dir") or str(branches_dir),
        mode=options.get("mode"),
        # The parent's group; a parent without one groups its branches under its own name.
        group=options.get("group") or parent,
        job_type=WANDB_JOB_TYPE,
        name=f"{parent}/{name}" if parent else name,
        tags=[name],
        config={PARENT_RUN: options.get("parent_id")},
        # A run beside the parent's, which stays `wandb.run` (Lightning's WandbLogger would reuse that one).
        reinit="create_new",
    )
    # As WandbLogger does for the runs it makes: logged values plotted against Lightning's step.
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return _BranchWandbLogger(
        experiment=run,
        project=options.get("project"),
        # WandbLogger takes None (it checks `save_dir is not None`) though its annotation says a path.
        save_dir=options.get("save_dir"),  # type: ignore[arg-type]
    )


def _rank_zero() -> bool:
    """Whether this is the process Lightning's loggers write from."""
    # Lightning sets `rank` on the function object at run time; its overloaded signature does not declare it.
    return rank_zero_only.rank == 0  # type: ignore[attr-defined]


class _BranchWandbLogger(WandbLogger):
    """A WandbLogger that finishes its branch's run at the end of the branch's fit (Lightning leaves runs open)."""

    @override
    def finalize(self, status: str) -> None:
        super().finalize(status)
        self.experiment.finish(exit_code=0 if status == "success" else 1)


def _mlflow_options(logger: MLFlowLogger) -> dict[str, Any]:
    client = logger.experiment
    return {
        "tracking_uri": str(client.tracking_uri),
        "experiment_name": client.get_experiment(logger.experiment_id).name,
        "parent_run_id": logger.run_id,
        "parent_run_name": client.get_run(logger.run_id).info.run_name,
    }


def _branch_mlflow_logger(options: dict[str, Any], name: str) -> MLFlowLogger:
    parent = options.get("parent_run_id")
    tags = {MLFLOW_PARENT_TAG: parent, PARENT_RUN: parent} if parent else {}
    parent_name = options.get("parent_run_name")
    return MLFlowLogger(
        experiment_name=options.get("experiment_name", "lightning_logs"),
        tracking_uri=options.get("tracking_uri"),
        run_name=f"{parent_name}/{name}" if parent_name else name,
        tags=tags,
    )
