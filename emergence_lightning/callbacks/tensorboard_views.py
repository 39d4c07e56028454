"""What TensorBoard shows of a run: custom-scalars layouts and HParams entries.

Both callbacks hand their charts and hyperparameter rows to these functions, so every
dashboard decision (which tags share a chart, what the HParams columns are) lives here.

Layout rules (issue 11): one chart per quantity, so nothing of another scale flattens it (E runs
to the hundreds, accuracy to 1); charts grouped by concern; every tag matched by an anchored regex,
so a chart holds exactly its quantity, once per run. Each branch is its own run (its own folder),
so every chart overlays the parent and all branches, one line each.

TensorBoard merges the layouts of all runs (categories with one title are merged, identical charts
kept once), and of one run it keeps the layout written last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from emergence_lightning.branching.monitor import ROLES, SUMMARY, role_pattern
from emergence_lightning.functional import emergence_as_float

# The accuracy and loss charts take the tags the package's one detector (branching.monitor) gives
# these roles, epoch-level only: per-step points would crowd an epoch-level chart.
TRAIN_ACCURACY, VAL_ACCURACY, TRAIN_LOSS, VAL_LOSS = map(role_pattern, ROLES)

#: Prefix of the HParams columns that say which run of a prune-and-branch experiment a row is.
RUN = "branch"

ACCURACY_CATEGORY = "accuracy"
LOSS_CATEGORY = "loss"


def _exact(tag: str) -> str:
    """A regex matching ``tag`` and nothing else."""
    return f"^{re.escape(tag)}$"


def _chart(*regexes: str) -> list[Any]:
    return ["Multiline", list(regexes)]


def _title(concern: str, prefix: str) -> str:
    # A second EmergenceCallback (another prefix) gets its own categories instead of merged ones.
    return concern if prefix == "emergence" else f"{concern} ({prefix})"


def metric_layout() -> dict[str, dict[str, list[Any]]]:
    """Accuracy and loss charts, one per quantity, matching the names Lightning users log."""
    return {
        ACCURACY_CATEGORY: {
            "training accuracy": _chart(TRAIN_ACCURACY),
            "validation accuracy": _chart(VAL_ACCURACY),
        },
        LOSS_CATEGORY: {
            "training loss": _chart(TRAIN_LOSS),
            "validation loss": _chart(VAL_LOSS),
        },
    }


def emergence_layout(
    prefix: str, path_exact: bool, layers: Mapping[str, int] | None = None
) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars charts of one ``EmergenceCallback`` (its tags start with ``prefix/``).

    Categories, in this order: emergence (E, log10 E), relative emergence (Ẽ), accuracy, loss,
    dead nodes per layer, active nodes per layer. With ``path_exact`` the path-exact E, log10 E and
    Ẽ get charts of their own beside the dense ones.

    Args:
        prefix: the callback's key prefix (``emergence``).
        path_exact: whether ``emergence/E_path`` and its companions are logged.
        layers: layer name -> node count, when known: one dead-nodes and one active-nodes chart
            per layer, titled ``net.1 (128 nodes)``. Unknown (None): one chart per concern holding
            every layer's line.
    """
    p = prefix
    emergence = {
        "E: paths from dead to active nodes": _chart(_exact(f"{p}/E")),
        "log10 E": _chart(_exact(f"{p}/log10_E")),
    }
    relative = {"Ẽ = E / free parameters": _chart(_exact(f"{p}/relative"))}
    if path_exact:
        emergence["E, path-exact (pruned weights are no path)"] = _chart(_exact(f"{p}/E_path"))
        # Both log10 E on one axis (one quantity, one scale): how far pruning cut the dense count.
        emergence["log10 E: dense and path-exact"] = _chart(
            _exact(f"{p}/log10_E"), _exact(f"{p}/log10_E_path")
        )
        relative["Ẽ, path-exact"] = _chart(_exact(f"{p}/relative_path"))
    if layers:
        dead = {
            f"dead nodes: {name} ({n} nodes)": _chart(_exact(f"{p}/dead/{name}"))
            for name, n in layers.items()
        }
        active = {
            f"active nodes: {name} ({n} nodes)": _chart(_exact(f"{p}/active/{name}"))
            for name, n in layers.items()
        }
    else:
        dead = {"dead nodes, one line per layer": _chart(rf"^{re.escape(p)}/dead/.+$")}
        active = {"active nodes, one line per layer": _chart(rf"^{re.escape(p)}/active/.+$")}
    active["share of active nodes, all layers"] = _chart(_exact(f"{p}/active_fraction"))
    return {
        _title("emergence", p): emergence,
        _title("relative emergence", p): relative,
        **metric_layout(),
        _title("dead nodes per layer", p): dead,
        _title("active nodes per layer", p): active,
    }


def branch_overlay_layout(monitor: str | None) -> dict[str, dict[str, list[Any]]]:
    """Charts a branch run adds: accuracy and loss, and the branches' monitored metric if it is neither.

    A branch with an ``EmergenceCallback`` writes that callback's layout after this one, which then
    wins for the run; both hold the same accuracy and loss charts, so TensorBoard's merge keeps one.
    """
    layout = metric_layout()
    if monitor is not None and not any(
        re.match(regex, monitor) for regex in (TRAIN_ACCURACY, VAL_ACCURACY, TRAIN_LOSS, VAL_LOSS)
    ):
        layout[ACCURACY_CATEGORY][f"monitored metric: {monitor}"] = _chart(_exact(monitor))
    return layout


@rank_zero_only
def write_activity_histograms(loggers: list[Any], prefix: str, layers: Sequence[Any], step: int) -> None:
    """Each layer's per-node activity as a histogram ``{prefix}/activity/<layer>`` (NaN nodes left out)."""
    for logger in tensorboard_loggers(loggers):
        for layer in layers:
            values = layer.activity[~layer.activity.isnan()]
            if values.numel():
                logger.experiment.add_histogram(f"{prefix}/activity/{layer.name}", values, global_step=step)


def tensorboard_loggers(loggers: list[Any]) -> list[TensorBoardLogger]:
    """The loggers among ``loggers`` that show custom-scalars charts and histograms (TensorBoard's)."""
    return [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]


def write_custom_scalars(loggers: list[Any], layout: dict[str, dict[str, list[Any]]]) -> None:
    """Write ``layout`` to every TensorBoard logger among ``loggers`` (others have no such view)."""
    for logger in tensorboard_loggers(loggers):
        logger.experiment.add_custom_scalars(layout)


def run_hparams(name: str, amount: float, fork_epoch: int, pruning_fn: str, status: str) -> dict[str, Any]:
    """The HParams columns naming a run of a prune-and-branch experiment (the parent: ``name="parent"``).

    TensorBoard ticks the first five hyperparameters by name: few ``branch/*`` columns, so that the
    name, amount and pruning function are among them (the name tells the kind: ``random-pruned-50``).
    """
    return {
        f"{RUN}/name": name,
        f"{RUN}/amount": float(amount),
        f"{RUN}/fork_epoch": fork_epoch,
        f"{RUN}/pruning_fn": pruning_fn,
        f"{RUN}/status": status,
    }


def summary_metrics(monitor: str | None, figures: Mapping[str, Any], path_exact: bool) -> dict[str, Any]:
    """The end-of-run scalars of a run, ``summary/<key>``, from its ``figures`` (None where unknown).

    ``figures`` holds ``final``, ``best``, ``E_end``, ``log10_E_end`` (``log10(E + 1)``),
    ``relative_E_end``, ``epochs_to_99``, ``parameters`` and, with ``path_exact``, ``E_path_end`` and
    ``relative_E_path_end``. Every run of an experiment gets the same keys, so every run's HParams
    entry lists the same columns (TensorBoard takes the columns from one run's entry).
    """
    name = monitor or "metric"
    # In this order in TensorBoard's table, which shows the first five metrics.
    keys = {f"final_{name}": "final", f"best_{name}": "best"}
    keys.update(
        {key: key for key in ("E_end", "log10_E_end", "relative_E_end", "epochs_to_99", "parameters")}
    )
    if path_exact:
        keys.update({key: key for key in ("E_path_end", "relative_E_path_end")})
    return {f"{SUMMARY}/{tag}": figures.get(key) for tag, key in keys.items()}


def write_run_summary(
    loggers: list[Any], step: int, params: dict[str, Any], figures: Mapping[str, Any]
) -> None:
    """Logs a run's end-of-run ``figures`` as scalars at ``step`` and ``params`` as hyperparameters, to every
    logger. TensorBoard gets one HParams row (the logger's hyperparameters plus ``params``) whose metric
    columns are the ``figures``, through ``TensorBoardLogger.log_hyperparams(params, metrics, step)``.
    Each logger on its own: one that fails gets a warning naming the run, the rest write.
    """
    metrics = {key: metric_value(value) for key, value in figures.items()}
    for logger in loggers:
        try:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams({**flat_hparams(logger.hparams), **params}, metrics, step=step)
            else:
                logger.log_metrics(metrics, step=step)
                logger.log_hyperparams(params)
        except Exception as error:  # noqa: BLE001 - a summary must not hide the run's own result or error
            name = params.get(f"{RUN}/name", "?")
            rank_zero_warn(
                f"PruneAndBranchCallback: could not log the summary of {name!r} to {type(logger).__name__}: {error}"
            )


def metric_value(value: Any) -> float:
    """A scalar for the loggers: NaN for None, inf for an exact E beyond float range."""
    if value is None:
        return math.nan
    return emergence_as_float(value) if isinstance(value, int) else float(value)  # E exact, E~ a float


def flat_hparams(hparams: Any, prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as one level of ``a/b`` keys with values HParams can show."""
    flat: dict[str, Any] = {}
    for key, value in dict(hparams).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = "None" if value is None else value
        else:
            flat[name] = str(value)
    return flat
