"""The report's summary table: one row per run, as summary.csv and summary.md with the same columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

Curve = tuple[np.ndarray, np.ndarray]
Curves = dict[str, dict[str, Curve]]

# `epochs` counts the epochs trained in the run itself (a branch's from its fork), as the branches'
# own summary.csv does; `last_epoch` is where the run ended on the shared epoch axis.
TABLE_COLUMNS = (
    "run", "name", "epochs", "last_epoch", "final_train_acc", "final_val_acc", "best_val_acc", "final_E",
    "final_relative_E",
)  # fmt: skip


def _final(curve: Curve | None) -> float | None:
    return float(curve[1][-1]) if curve is not None and len(curve[0]) else None


def _as_int(value: float | None) -> float | int | None:
    return int(value) if value is not None and float(value).is_integer() else value


def summary_table(
    curves: Curves, prefix: str, names: dict[str, str], first_epoch: dict[str, int | None]
) -> list[dict[str, object]]:
    table: list[dict[str, object]] = []
    for run, by_series in sorted(curves.items()):
        val_acc = by_series.get("val_acc")
        last_epochs = [x[-1] for x, _ in by_series.values() if len(x)]
        last = max(last_epochs) if last_epochs else None
        first_xs = [x[0] for x, _ in by_series.values() if len(x)]
        # Without Lightning's epoch scalar the run's first step is its start.
        start = (
            first_epoch.get(run)
            if first_epoch.get(run) is not None
            else (min(first_xs) if first_xs else None)
        )
        table.append({
            "run": run,
            "name": names[run],
            "epochs": _as_int(last - start) if last is not None and start is not None else None,
            "last_epoch": _as_int(last),
            "final_train_acc": _final(by_series.get("train_acc")),
            "final_val_acc": _final(val_acc),
            "best_val_acc": float(val_acc[1].max()) if val_acc is not None and len(val_acc[1]) else None,
            "final_E": _final(by_series.get(f"{prefix}/E")),
            "final_relative_E": _final(by_series.get(f"{prefix}/relative")),
        })  # fmt: skip
    return table


def write_tables(table: list[dict[str, object]], out_dir: Path) -> tuple[Path, Path]:
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table)
    formats = {
        "final_train_acc": "{:.4f}",
        "final_val_acc": "{:.4f}",
        "best_val_acc": "{:.4f}",
        "final_E": "{:.6g}",
        "final_relative_E": "{:.4g}",
    }
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in table:
        cells = ["–" if row[c] is None else formats.get(c, "{}").format(row[c]) for c in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
