"""Logged scalars from a logger's files: TensorBoard event files and CSV ``metrics.csv`` tables.

A *run* is a folder holding either. Both are read into the same ``(tag, step, value)`` events,
so a report's figures and table do not depend on which logger wrote them:

- TensorBoard (``events.out.tfevents*``): Lightning's ``TensorBoardLogger`` or a ``SummaryWriter``.
  Values are stored as float32.
- CSV (``metrics.csv``): Lightning's ``CSVLogger`` writes one row per ``log_metrics`` call, a
  ``step`` column and one column per key, empty where the call did not log the key. Any table with
  a ``step`` column and a column per key reads the same way, one value per row or many: an export
  of a W&B or MLflow run (docs/reproduction.md shows how). Values keep full precision.

A folder holding both (a Trainer with a TensorBoard and a CSV logger writing into one folder, as
the branches of such a run do) is read from one source only, ``source="auto"`` taking the event
files; the two hold the same values.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator

from emergence_lightning.branching.store import EVENT_GLOB

#: The table Lightning's CSVLogger writes (its ``ExperimentWriter.NAME_METRICS_FILE``), read by name.
METRICS_CSV = "metrics.csv"
#: The column of a ``metrics.csv`` that holds the step every other value of its row was logged at.
STEP_COLUMN = "step"
SOURCES = ("auto", "tensorboard", "csv")

# tag -> [(step, value), ...] in the order logged
Events = dict[str, list[tuple[int, float]]]


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}.")


def _has_events(folder: Path) -> bool:
    return any(path.is_file() for path in folder.glob(EVENT_GLOB))


def _has_csv(folder: Path) -> bool:
    return (folder / METRICS_CSV).is_file()


def run_source(folder: Path, source: str = "auto") -> str | None:
    """Which files of ``folder`` a report reads: ``"tensorboard"``, ``"csv"``, or None for neither."""
    _check_source(source)
    if source in ("auto", "tensorboard") and _has_events(folder):
        return "tensorboard"
    if source in ("auto", "csv") and _has_csv(folder):
        return "csv"
    return None


def find_runs(log_dir: str | os.PathLike, source: str = "auto") -> dict[str, Path]:
    """Every directory under ``log_dir`` (itself included) that holds a logger's files.

    Args:
        log_dir: the folder to search.
        source: ``"auto"`` (event files or ``metrics.csv``), ``"tensorboard"`` or ``"csv"``.

    Returns:
        Run name (path relative to ``log_dir``; ``log_dir``'s own name for itself) -> directory,
        sorted by name.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist or holds no files of ``source``.
        ValueError: ``source`` is not one of :data:`SOURCES`.
    """
    _check_source(source)
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Log directory {str(root)!r} does not exist.")
    candidates = {path.parent for path in root.rglob(EVENT_GLOB)} | {
        p.parent for p in root.rglob(METRICS_CSV)
    }
    folders = sorted(folder for folder in candidates if run_source(folder, source) is not None)
    if not folders:
        wanted = {
            "auto": f"No TensorBoard event files ({EVENT_GLOB}) and no CSV logs ({METRICS_CSV})",
            "tensorboard": f"No TensorBoard event files ({EVENT_GLOB})",
            "csv": f"No CSV logs ({METRICS_CSV})",
        }[source]
        raise FileNotFoundError(
            f"{wanted} under {str(root)!r}: expected a log directory written by Lightning's "
            "TensorBoardLogger or CSVLogger (or a SummaryWriter), such as lightning_logs/version_0."
        )
    runs = {}
    for folder in folders:
        name = folder.relative_to(root).as_posix()
        runs[root.resolve().name if name == "." else name] = folder
    return dict(sorted(runs.items()))


def read_tensorboard(folder: Path) -> Events:
    """Every scalar of the event files in ``folder``."""
    # size_guidance 0 keeps every value (the default samples 10,000); keep out-of-order steps too.
    accumulator = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=False
    )
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()[event_accumulator.SCALARS]
    }


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"{str(path)!r} line {line}, column {column!r}: expected a number, got {text!r}."
        ) from None


def read_csv(path: Path) -> Events:
    """Every value of a ``metrics.csv``: each non-empty cell is a value of its column at its row's step.

    Raises:
        ValueError: the table has no ``step`` column, or a cell is not a number.
    """
    events: Events = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if STEP_COLUMN not in columns:
            raise ValueError(
                f"{str(path)!r} has no {STEP_COLUMN!r} column (its columns: {columns}): a report needs the "
                f"step of each value; rename the step column of an export to {STEP_COLUMN!r}."
            )
        for line, row in enumerate(reader, start=2):
            step_text = row[STEP_COLUMN]
            if step_text in ("", None):
                continue  # a row of values logged without a step: no place on any axis
            step = _number(step_text, path, line, STEP_COLUMN)
            if not math.isfinite(step) or not step.is_integer():
                raise ValueError(
                    f"{str(path)!r} line {line}: `step` must be a whole number, got {step_text!r}."
                )
            for column, text in row.items():
                if column in (STEP_COLUMN, None) or text in ("", None):
                    continue
                events.setdefault(column, []).append((int(step), _number(text, path, line, column)))
    return events


def read_run(folder: Path, source: str = "auto") -> Events:
    """The scalars of one run folder, from the files :func:`run_source` picks."""
    kind = run_source(folder, source)
    if kind == "tensorboard":
        return read_tensorboard(folder)
    if kind == "csv":
        return read_csv(folder / METRICS_CSV)
    raise FileNotFoundError(f"{str(folder)!r} holds no {source} logs.")
