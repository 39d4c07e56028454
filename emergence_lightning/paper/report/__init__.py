"""Figures and a summary table from any logger's files: the paper's plots, with no Lightning needed.

A *run* is a directory holding TensorBoard event files (``events.out.tfevents*``) or a CSV
``metrics.csv`` (Lightning's CSVLogger, or an export of a W&B or MLflow run; see :mod:`.readers`);
its name is its path relative to the log directory (``version_0/branches/pruned-30``). Runs whose names differ only by a
``seed-<k>`` path component form a *group*, drawn as the mean with a ±1 std band.

The x axis is epochs of training completed. Lightning logs with every value an ``epoch`` scalar
that holds the epoch in progress, so a value logged at the end of epoch ``e`` is placed at
``e + 1``. A measurement taken before an epoch's training (EmergenceCallback's first one, or one
right after a fork) repeats that epoch's number at an earlier step; such a leading point is placed
at ``e``. A run that logs no ``epoch`` scalar uses its steps as epochs.

Example::

    result = make_report("lightning_logs/version_0")
    result.figures["emergence_log"]   # Path of the PNG
"""

from __future__ import annotations

import bisect
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emergence_lightning.paper.report.plot import ACC_CHANGE, PARENT, Plotter
from emergence_lightning.paper.report.readers import EVENT_GLOB, METRICS_CSV, SOURCES, find_runs, read_run  # noqa: F401
from emergence_lightning.paper.report.table import TABLE_COLUMNS, summary_table, write_tables  # noqa: F401 (re-exported)
from emergence_lightning.paper.report.tags import choose_tags, missing_reason, parse_metrics, used_tags

SEED_COMPONENT = re.compile(r"seed-\d+")

# Curves: run (or group) -> series name -> (epochs, values); series names are tags plus derived ones.
Curve = tuple[np.ndarray, np.ndarray]
Curves = dict[str, dict[str, Curve]]


@dataclass(frozen=True)
class Scalar:
    """One logged value: the tidy row of a report."""

    run: str
    tag: str
    step: int
    epoch: int | None  # Lightning's `epoch` scalar at this step (or the latest before it); None if none
    value: float


@dataclass
class ReportResult:
    """What :func:`make_report` wrote, and the runs it read."""

    out_dir: Path
    figures: dict[str, Path]  # figure name -> PNG, only for figures whose data exists
    table_csv: Path
    table_markdown: Path
    runs: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> its runs (seeds merged)
    skipped: dict[str, str] = field(default_factory=dict)  # figure name -> why it was not drawn
    metric_tags: dict[str, dict[str, str | None]] = field(default_factory=dict)  # run -> role -> tag
    drawings: dict[str, Figure] = field(default_factory=dict)  # figure name -> the matplotlib figure saved


def load_scalars(log_dir: str | os.PathLike, source: str = "auto") -> list[Scalar]:
    """Every scalar of every run under ``log_dir``, each with the epoch it was logged in.

    Args:
        log_dir: a folder of runs.
        source: which logger's files to read (see :mod:`.readers`): ``"auto"``, ``"tensorboard"``, ``"csv"``.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist or holds no logs of ``source``.
    """
    rows = []
    for run, folder in find_runs(log_dir, source).items():
        tags = read_run(folder, source)
        epoch_at = dict(sorted(tags.get("epoch", [])))  # step -> epoch; the last write of a step wins
        steps = list(epoch_at)
        for tag, events in tags.items():
            for step, value in events:
                index = bisect.bisect_right(steps, step) - 1
                epoch = int(epoch_at[steps[index]]) if index >= 0 else None
                rows.append(Scalar(run, tag, step, epoch, float(value)))
    return rows


def _epoch_axis(points: list[Scalar], has_epochs: bool) -> Curve:
    """One tag of one run as (epochs completed, values), ordered by step; see the module docstring."""
    points = sorted(points, key=lambda p: p.step)
    if not has_epochs:
        return np.array([p.step for p in points], float), np.array([p.value for p in points])
    epoch_points = [(p.epoch, p.step, p.value) for p in points if p.epoch is not None]
    by_x: dict[float, float] = {}
    for index, (epoch, step, value) in enumerate(epoch_points):
        leading = (
            index == 0 and len(epoch_points) > 1 and epoch_points[1][0] == epoch and epoch_points[1][1] > step
        )
        by_x[epoch + (0 if leading else 1)] = value  # a repeated x keeps the last value
    xs = sorted(by_x)
    return np.array(xs, float), np.array([by_x[x] for x in xs])


def _fork_parent(run: str, root_name: str) -> str | None:
    """For a branch (a run in a ``branches`` folder), the run it forked from: ``a/branches/b`` -> ``a``.

    ``root_name`` is the log directory's name, which is also the name of a run stored right in it.
    """
    parts = [root_name, *run.split("/")]
    if parts[-2] != "branches":
        return None
    return "/".join(parts[1:-2]) or root_name


def _run_curves(
    rows: list[Scalar],
    prefix: str,
    root_name: str,
    metrics: tuple[str, ...] = (),
    chosen: dict[str, dict[str, str | None]] | None = None,
) -> Curves:
    """Per run: every tag as a curve, plus the change in training accuracy and per-layer active shares.

    The run's accuracy and loss tags (``train_acc_epoch``, ``val/acc``...; see
    :mod:`emergence_lightning.paper.report.tags`) are also stored under their role's name (``train_acc``,
    ``val_acc``, ``train_loss``, ``val_loss``); ``chosen``, when given, receives run -> role -> tag.
    """
    by_run_tag: dict[str, dict[str, list[Scalar]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_run_tag[row.run][row.tag].append(row)
    curves: Curves = {}
    for run, tags in by_run_tag.items():
        has_epochs = "epoch" in tags
        run_curves = {tag: _epoch_axis(points, has_epochs) for tag, points in tags.items() if tag != "epoch"}
        roles = choose_tags(run_curves, metrics, exclude_prefix=prefix)
        for role, tag in roles.items():
            if tag is not None:
                run_curves[role] = run_curves[tag]
        if chosen is not None:
            chosen[run] = roles
        layers = [
            tag.removeprefix(f"{prefix}/active/") for tag in tags if tag.startswith(f"{prefix}/active/")
        ]
        for layer in layers:
            dead = run_curves.get(f"{prefix}/dead/{layer}")
            if dead is not None:
                run_curves[f"{prefix}/active_share/{layer}"] = _active_share(
                    run_curves[f"{prefix}/active/{layer}"], dead
                )
        curves[run] = run_curves
    for run, run_curves in curves.items():
        if "train_acc" not in run_curves:
            continue
        x, y = run_curves["train_acc"]
        # A branch's first change is taken from its parent's accuracy at the fork: what pruning cost.
        parent_run = _fork_parent(run, root_name)
        parent = curves.get(parent_run, {}) if parent_run is not None else {}
        if "train_acc" in parent and len(x):
            parent_x, parent_y = parent["train_acc"]
            before = parent_x < x[0]
            if before.any():
                x, y = np.r_[parent_x[before][-1], x], np.r_[parent_y[before][-1], y]
        run_curves[ACC_CHANGE] = (x[1:], np.diff(y))
    return curves


def _active_share(active: Curve, dead: Curve) -> Curve:
    """active / (active + dead) at the epochs both curves have."""
    x, in_active, in_dead = np.intersect1d(active[0], dead[0], return_indices=True)
    a, d = active[1][in_active], dead[1][in_dead]
    with np.errstate(invalid="ignore", divide="ignore"):
        return x, np.where(a + d > 0, a / (a + d), np.nan)


def _group_name(run: str) -> str:
    parts = [part for part in run.split("/") if not SEED_COMPONENT.fullmatch(part)]
    if parts:
        return "/".join(parts)
    # "seed-0", "seed-1", ...: the parent runs of a multi-seed experiment form one group too.
    return PARENT if SEED_COMPONENT.fullmatch(run) else run


def _aggregate(curves: Curves, groups: dict[str, list[str]]) -> dict[str, dict[str, tuple[np.ndarray, ...]]]:
    """Per group and series: (epochs, mean, std, count) over the group's runs at each epoch."""
    result: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}
    for group, runs in groups.items():
        names = sorted({name for run in runs for name in curves[run]})
        result[group] = {}
        for name in names:
            values_at: dict[float, list[float]] = defaultdict(list)
            for run in runs:
                for x, y in zip(*curves[run].get(name, ((), ()))):
                    values_at[x].append(y)
            if not values_at:
                continue
            xs = sorted(values_at)
            stats = [
                (np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0, len(v))
                for v in (values_at[x] for x in xs)
            ]
            mean, std, count = (np.array(column, float) for column in zip(*stats))
            result[group][name] = (np.array(xs, float), mean, std, count)
    return result


def _names(groups: dict[str, list[str]], root_name: str) -> dict[str, str]:
    """Group -> the name legends and tables use: ``parent`` and the branch names (``pruned-30``).

    Group names lose the path components they all share (at least one kept). With one parent,
    the run the branches forked from is ``parent`` and a branch is its folder name; with several
    (several experiments in one log directory) each keeps its path, less the ``branches`` folder.
    """
    parts = {group: group.split("/") for group in groups}
    shared = 0
    shortest = min(len(p) for p in parts.values())
    while shared < shortest - 1 and len({tuple(p[: shared + 1]) for p in parts.values()}) == 1:
        shared += 1
    parents = {
        _group_name(parent)
        for runs in groups.values()
        for run in runs
        if (parent := _fork_parent(run, root_name)) is not None
    }
    names = {}
    for group in groups:
        kept = parts[group][shared:]
        if len(parents) == 1 and group in parents:
            names[group] = PARENT
        elif len(parents) == 1 and "branches" in kept:
            names[group] = "/".join(kept[len(kept) - kept[::-1].index("branches") :])
        else:
            names[group] = "/".join(part for part in kept if part != "branches")
    return names


def _labels(groups: dict[str, list[str]], root_name: str = "") -> dict[str, str]:
    """Legend labels: the group's name (see :func:`_names`), and the seed count when it averages seeds."""
    names = _names(groups, root_name)
    return {
        group: f"{names[group]} (mean ± std, {len(runs)} seeds)" if len(runs) > 1 else names[group]
        for group, runs in groups.items()
    }


def _join_to_fork(curves: Curves, root_name: str, first_epoch: dict[str, int | None]) -> Curves:
    """Curves for drawing: each branch series that starts after the fork begins at its parent's value there.

    A branch's accuracy and loss are first logged one epoch after the fork; its line then starts at
    the fork point it shares with the parent, as its E line (measured at the fork) already does.
    """
    joined: Curves = {run: dict(series) for run, series in curves.items()}
    for run, by_series in joined.items():
        parent = curves.get(_fork_parent(run, root_name) or "", {})
        fork = first_epoch.get(run)
        if not parent or fork is None:
            continue
        for name, (x, y) in by_series.items():
            if name not in parent or not len(x) or x[0] <= fork:
                continue
            parent_x, parent_y = parent[name]
            at_fork = np.flatnonzero(parent_x == fork)
            if at_fork.size:
                by_series[name] = (np.r_[float(fork), x], np.r_[parent_y[at_fork[-1]], y])
    return joined


def _layer_sizes(curves: Curves, prefix: str) -> dict[str, int]:
    """Layer -> node count (active + dead at a measurement), from the first run that logged both."""
    sizes: dict[str, int] = {}
    for by_series in curves.values():
        for name, (_, active) in by_series.items():
            if name.startswith(f"{prefix}/active/"):
                layer = name.removeprefix(f"{prefix}/active/")
                dead = by_series.get(f"{prefix}/dead/{layer}")
                if layer not in sizes and dead is not None and len(active) and len(dead[1]):
                    sizes[layer] = int(round(active[0] + dead[1][0]))
    return sizes


def _first_epochs(rows: list[Scalar]) -> dict[str, int | None]:
    """Run -> the epoch in progress at its first value: 0 for a parent, the fork epoch for a branch."""
    first: dict[str, int | None] = {}
    for row in rows:
        known = first.get(row.run)
        if row.epoch is None:
            first.setdefault(row.run, None)
        else:
            first[row.run] = row.epoch if known is None else min(known, row.epoch)
    return first


def _fork_epoch(rows: list[Scalar], root_name: str) -> int | None:
    """The first epoch of the branch runs (their path has a ``branches`` folder), or None."""
    epochs = [
        row.epoch for row in rows if row.epoch is not None and _fork_parent(row.run, root_name) is not None
    ]
    return min(epochs) if epochs else None


def make_report(
    log_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    prefix: str = "emergence",
    metrics: Sequence[str] | str | None = None,
    source: str = "auto",
) -> ReportResult:
    """Read every run under ``log_dir`` and write the paper's figures and a summary table.

    Figures (PNG; one is left out when no run logged its data): ``emergence_and_accuracy_change``
    (E and the epoch-to-epoch change in ``train_acc``, on one x range), ``relative_emergence``,
    ``emergence_log`` (E; a log axis, said in the title and y label, when it spans over 20x),
    ``train_accuracy``, ``val_accuracy``, ``loss`` (training solid, validation dashed) and
    ``active_fraction_per_layer`` (one panel per run, scaled to its data; the branches' panels
    share one range). A figure without data is not drawn; the
    reason is in ``ReportResult.skipped``. Accuracy and loss are found under the names Lightning
    writes (``train_acc``, ``train_acc_epoch``, ``train/acc``, ``val_MulticlassAccuracy``...) or
    taken from ``metrics``; ``ReportResult.metric_tags`` tells which tag each run used.
    Runs are overlaid; when run names contain a ``branches`` folder, a dotted line marks the fork
    epoch (the first epoch of the branch runs), every branch line starts at the fork point, and
    each figure gets a second panel zoomed to the epochs from the fork on (scaled to every point
    there, the parent's at the fork included). The run the branches
    forked from is named ``parent``, a branch by its folder (``pruned-30``), each with a fixed
    colour. The table ``summary.csv`` / ``summary.md`` (same columns, see ``TABLE_COLUMNS``) gives,
    per run: its name, the epochs it trained (a branch's from the fork, as the branches' own
    ``summary.csv``), the last epoch, final training and validation accuracy, best validation
    accuracy, final E and final relative E (TensorBoard stores values as float32, so a large E is
    rounded). ``ReportResult.drawings`` holds the matplotlib figures saved.

    Args:
        log_dir: a directory of runs logged by TensorBoard or CSV loggers, e.g. ``lightning_logs/version_0``.
        out_dir: where to write; defaults to ``<log_dir>/report``.
        prefix: the prefix of EmergenceCallback's keys.
        metrics: accuracy or loss tags to use instead of the detected ones, e.g.
            ``["train/top1", "val/top1"]`` or ``"train/top1,val/top1"``; a tag naming a validation
            stage (``val``...) is the validation metric, a tag with ``loss`` in it a loss.
        source: which files to read: ``"auto"`` (event files, else ``metrics.csv``, per folder),
            ``"tensorboard"`` or ``"csv"``; see :mod:`.readers`.

    Returns:
        The paths written, the runs read and the seed groups.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist or holds no logs of ``source``.
        ValueError: the logs hold no scalars, a tag of ``metrics`` is in no run, ``source`` is
            unknown, or a ``metrics.csv`` has no ``step`` column or a cell that is not a number.
    """
    if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
        raise ValueError(f"`prefix` must be a non-empty string not ending in '/', got {prefix!r}.")
    metrics = parse_metrics(metrics)
    log_dir = Path(log_dir)
    rows = load_scalars(log_dir, source)
    if not rows:
        raise ValueError(f"The logs under {str(log_dir)!r} hold no scalars: nothing to plot.")
    all_tags = {row.tag for row in rows}
    missing = [tag for tag in metrics if tag not in all_tags]
    if missing:
        raise ValueError(
            f"`metrics` (--metric) tag(s) {missing} are in no run under {str(log_dir)!r}; "
            f"its scalar tags are {sorted(tag for tag in all_tags if not tag.startswith(prefix + '/'))}."
        )
    out = Path(out_dir) if out_dir is not None else log_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    root_name = log_dir.resolve().name
    chosen: dict[str, dict[str, str | None]] = {}
    curves = _run_curves(rows, prefix, root_name, metrics, chosen)
    runs = sorted(curves)
    groups: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        groups[_group_name(run)].append(run)
    # The parent first, in legends and panels, then the branches by name.
    parent_first = _names(dict(groups), root_name)
    groups = dict(sorted(groups.items(), key=lambda item: parent_first[item[0]] != PARENT))
    first_epoch = _first_epochs(rows)
    labels = _labels(groups, root_name)
    drawn_curves = _join_to_fork(curves, root_name, first_epoch)
    plotter = Plotter(_aggregate(drawn_curves, groups), labels, _fork_epoch(rows, root_name), out)

    figures, skipped = {}, {}
    e_series = f"{prefix}/E"
    no_e = (
        f"no run logged `{e_series}`: is EmergenceCallback in the Trainer's callbacks, "
        f"with prefix {prefix!r}?"
    )
    used = used_tags(chosen)
    no_train_acc = missing_reason("training accuracy", all_tags, prefix)
    if not plotter.has(e_series):
        skipped["emergence_and_accuracy_change"] = no_e
    elif not plotter.has(ACC_CHANGE):
        # E alone with an empty accuracy axis and its legend entry would mislead: leave it out.
        skipped["emergence_and_accuracy_change"] = no_train_acc
    else:
        figures["emergence_and_accuracy_change"] = plotter.emergence_and_accuracy_change(e_series)
    if plotter.has(f"{prefix}/relative"):
        figures["relative_emergence"] = plotter.single(
            "relative_emergence",
            f"{prefix}/relative",
            "Ẽ = E / free parameters",  # short: a long label runs into the title above the panel
            "Relative emergence Ẽ per epoch",
        )
    else:
        skipped["relative_emergence"] = no_e.replace(e_series, f"{prefix}/relative")
    if plotter.has(e_series):
        figures["emergence_log"] = plotter.single(
            "emergence_log", e_series, "emergence E", "Emergence E per epoch", yscale="log"
        )
    else:
        skipped["emergence_log"] = no_e
    if plotter.has("train_acc"):
        figures["train_accuracy"] = plotter.single(
            "train_accuracy", "train_acc", f"training accuracy ({used['train_acc']})", "Training accuracy"
        )
    else:
        skipped["train_accuracy"] = no_train_acc
    if plotter.has("val_acc"):
        figures["val_accuracy"] = plotter.single(
            "val_accuracy", "val_acc", f"validation accuracy ({used['val_acc']})", "Validation accuracy"
        )
    else:
        skipped["val_accuracy"] = missing_reason("validation accuracy", all_tags, prefix)
    if plotter.has("train_loss") or plotter.has("val_loss"):
        figures["loss"] = plotter.losses(used)
    else:
        skipped["loss"] = missing_reason("loss", all_tags, prefix)
    if any(name.startswith(f"{prefix}/active_share/") for by_series in curves.values() for name in by_series):
        figures["active_fraction_per_layer"] = plotter.active_shares(prefix, _layer_sizes(curves, prefix))
    else:
        skipped["active_fraction_per_layer"] = (
            f"no run logged both `{prefix}/active/<layer>` and `{prefix}/dead/<layer>` (EmergenceCallback's "
            f"per-layer counts, prefix {prefix!r})"
        )

    group_names = _names(groups, root_name)
    run_names = {run: group_names[group] for group, members in groups.items() for run in members}
    table_csv, table_markdown = write_tables(summary_table(curves, prefix, run_names, first_epoch), out)
    return ReportResult(out, figures, table_csv, table_markdown, runs, groups, skipped, chosen, plotter.drawn)
