"""From run records to the study's tables: each proxy's rank correlation with final accuracy.

For every proxy: Kendall tau-b and Spearman rho over all runs with 95 % bootstrap intervals
(architectures resampled with their seeds), and the same within bins of similar ``#params``
(tau over pairs in the same bin; rho averaged over bins) to ask whether a proxy ranks
architectures of equal size. Written as markdown and CSV.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emergence_lightning.paper.predictor.study import final_accuracy, proxy_values
from emergence_lightning.predictor.stats import (
    bootstrap_ci,
    grouped_spearman,
    kendall_tau,
    size_bins,
    spearman_rho,
)

COLUMNS = (
    "proxy",
    "runs",
    "kendall_tau",
    "tau_low",
    "tau_high",
    "spearman_rho",
    "rho_low",
    "rho_high",
    "tau_within_size",
    "tau_within_low",
    "tau_within_high",
    "rho_within_size",
    "within_pairs",
)


def correlation_table(
    records: Sequence[dict[str, Any]], resamples: int = 1000, bin_decades: float = 0.25, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per proxy (see :data:`COLUMNS`), computed from ``records``' proxies and final accuracies."""
    if len(records) < 3:
        raise ValueError(f"A correlation needs at least 3 runs, got {len(records)}.")
    accuracy = np.array([final_accuracy(r) for r in records])
    values = [proxy_values(r) for r in records]
    architectures = [r["name"] for r in records]
    bins = np.array(size_bins([int(v["#params"]) for v in values], bin_decades))
    same_bin = bins[:, None] == bins[None, :]
    within_pairs = int(np.triu(same_bin, k=1).sum())
    rows = []
    for proxy in values[0]:
        x = np.array([v[proxy] for v in values], dtype=np.float64)

        def tau(rows_: np.ndarray, x: np.ndarray = x) -> float:
            return kendall_tau(x[rows_], accuracy[rows_])

        def rho(rows_: np.ndarray, x: np.ndarray = x) -> float:
            return spearman_rho(x[rows_], accuracy[rows_])

        def tau_within(rows_: np.ndarray, x: np.ndarray = x) -> float:
            # A resample repeats architectures; a pair of one run with its own copy is no evidence.
            return kendall_tau(x[rows_], accuracy[rows_], groups=bins[rows_])

        everything = np.arange(len(records))
        tau_ci = bootstrap_ci(tau, architectures, resamples, seed=seed)
        rho_ci = bootstrap_ci(rho, architectures, resamples, seed=seed)
        within_ci = bootstrap_ci(tau_within, architectures, resamples, seed=seed)
        rows.append({
            "proxy": proxy,
            "runs": len(records),
            "kendall_tau": tau(everything),
            "tau_low": tau_ci[0],
            "tau_high": tau_ci[1],
            "spearman_rho": rho(everything),
            "rho_low": rho_ci[0],
            "rho_high": rho_ci[1],
            "tau_within_size": tau_within(everything),
            "tau_within_low": within_ci[0],
            "tau_within_high": within_ci[1],
            "rho_within_size": grouped_spearman(x, accuracy, bins),
            "within_pairs": within_pairs,
        })  # fmt: skip
    return rows


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.2f}"


def correlation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| proxy | Kendall τ [95 % CI] | Spearman ρ [95 % CI] | τ within size bins [95 % CI] | ρ within size bins |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['proxy']} | {_fmt(row['kendall_tau'])} [{_fmt(row['tau_low'])}, {_fmt(row['tau_high'])}] "
            f"| {_fmt(row['spearman_rho'])} [{_fmt(row['rho_low'])}, {_fmt(row['rho_high'])}] "
            f"| {_fmt(row['tau_within_size'])} [{_fmt(row['tau_within_low'])}, {_fmt(row['tau_within_high'])}] "
            f"| {_fmt(row['rho_within_size'])} |"
        )
    return "\n".join(lines) + "\n"


def stopping_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    """One table per group of runs (e.g. all runs, runs with two or more tracked layers)."""
    parts = []
    for label, summary in summaries.items():
        lines = [
            (
                f"**{label}**: {summary['runs']} runs of {summary['max_epochs']} epochs; E never reached 0 in "
                f"{summary['E_never_zero']}, and was 0 already before training in {summary['E_zero_at_init']}."
            ),
            "",
            "| rule | runs stopped | epochs saved (mean / median) | accuracy lost, points (mean / median / max) |",
            "|---|---|---|---|",
        ]
        for rule, name in (
            ("stop_at_zero", "stop_at_zero"),
            ("early_stopping", "EarlyStopping(val_loss, patience=3)"),
        ):
            r = summary[rule]
            lines.append(
                f"| {name} | {r['stopped']} | {r['epochs_saved_mean']:.1f} / {r['epochs_saved_median']:.1f} | "
                f"{100 * r['accuracy_lost_mean']:+.2f} / {100 * r['accuracy_lost_median']:+.2f} / "
                f"{100 * r['accuracy_lost_max']:+.2f} |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def runs_table(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: name, family, seed, seconds, final accuracy and every proxy."""
    return [
        {
            "name": r["name"],
            "family": r["family"],
            "seed": r["seed"],
            "seconds": round(r["seconds"], 2),
            "final_accuracy": final_accuracy(r),
            **proxy_values(r),
        }
        for r in records
    ]


def write_tables(
    out_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    stopping: dict[str, dict[str, Any]],
    records: Sequence[dict[str, Any]],
) -> dict[str, Path]:
    """Writes correlations.{md,csv}, stopping.{md,json} and runs.csv into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "correlations_md": out / "correlations.md",
        "correlations_csv": out / "correlations.csv",
        "stopping_md": out / "stopping.md",
        "stopping_json": out / "stopping.json",
        "runs_csv": out / "runs.csv",
    }
    paths["correlations_md"].write_text(correlation_markdown(rows))
    with paths["correlations_csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    paths["stopping_md"].write_text(stopping_markdown(stopping))
    paths["stopping_json"].write_text(json.dumps(stopping, indent=2))
    flat = runs_table(records)
    with paths["runs_csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    return paths
