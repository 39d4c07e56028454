"""The branch results as a text table (what ``verbose`` prints) and as ``summary.csv`` rows.

No Lightning import. The columns are fields of :class:`~emergence_lightning.branching.result.BranchResult`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from emergence_lightning.branching.plan import percent
from emergence_lightning.branching.result import BranchResult

#: A result as the callback holds it, or as ``result.json`` reads back.
Result = BranchResult | Mapping[str, Any]

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


def csv_text(results: Sequence[Result]) -> str:
    """``summary.csv``: one row per result, :data:`SUMMARY_COLUMNS` only."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {column: _csv_value(result.get(column)) for column in SUMMARY_COLUMNS} for result in results
    )
    return buffer.getvalue()


def summary_table(results: Sequence[Result], branch_epoch: int) -> str:
    """The results as an aligned text table, failed branches' errors below it."""
    monitor = next((r.get("monitor") for r in results if r.get("monitor")), None) or "metric"
    # The path-exact columns only when some branch has them (connectivity="weights").
    with_path = any(r.get(column) is not None for r in results for column in PATH_COLUMNS)
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
    for r in results:
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
    lines += [f"{r['name']} failed: {r.get('error')}" for r in results if r.get("status") == "failed"]
    return f"Prune and branch: branches forked after epoch {branch_epoch}\n" + "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6)) if math.isfinite(value) else str(value)
    return value


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
