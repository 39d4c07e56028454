"""Drawing for :mod:`emergence_lightning.report`: one colour per run group across every figure.

Series come aggregated per group as ``(epochs, mean, std, count)``; see ``report._aggregate``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

ACC_CHANGE = "train_acc_change"  # the derived series: epoch-to-epoch change in training accuracy


def _natural_key(name: str) -> list:
    """Sort ``net.10`` after ``net.2``: layer names in forward order for sequential models."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _plot_mean_std(ax, stats, color, label, linestyle="-", marker="o", band=True) -> None:
    """A group's mean line, and a ±1 std band when it averages several runs."""
    x, mean, std, count = stats
    ax.plot(x, mean, linestyle=linestyle, marker=marker, markersize=3, color=color, label=label)
    if band and count.max() > 1:
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


class Plotter:
    """Draws the groups' curves with one colour per group across every figure."""

    def __init__(self, aggregated, labels: dict[str, str], fork: int | None, out_dir: Path) -> None:
        self.aggregated = aggregated
        self.labels = labels
        self.fork = fork
        self.out_dir = out_dir
        palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
        self.colors = {group: palette(index % palette.N) for index, group in enumerate(labels)}

    def has(self, series: str) -> bool:
        return any(series in by_series for by_series in self.aggregated.values())

    def minimum(self, series: str) -> float:
        return min(
            by_series[series][1].min() for by_series in self.aggregated.values() if series in by_series
        )

    def draw(
        self, ax, series: str, linestyle: str = "-", marker: str = "o", label: bool = True, band: bool = True
    ) -> None:
        for group, by_series in self.aggregated.items():
            if series in by_series:
                label_text = self.labels[group] if label else None
                _plot_mean_std(ax, by_series[series], self.colors[group], label_text, linestyle, marker, band)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    def mark_fork(self, ax) -> None:
        if self.fork is not None:
            ax.axvline(
                self.fork, color="0.4", linestyle=":", linewidth=1.2, label=f"fork (epoch {self.fork})"
            )

    def save(self, fig: Figure, name: str, axes, title: str) -> Path:
        axes[0].set_title(title)
        handles, labels = [], []
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        # Outside the axes, so no curve hides behind it; bbox_inches="tight" keeps it in the image.
        anchor = (1.12 if len(axes) > 1 else 1.02, 1)  # clear of a twin axis's tick labels
        axes[-1].legend(
            handles, labels, loc="upper left", bbox_to_anchor=anchor, fontsize="small", frameon=False
        )
        axes[0].grid(True, alpha=0.3)  # one grid: a twin axis's own grid would not line up
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path

    def single(self, name: str, series: str, ylabel: str, title: str, yscale: str | None = None) -> Path:
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        self.draw(ax, series)
        self.mark_fork(ax)
        if yscale == "log":
            if self.minimum(series) > 0:
                ax.set_yscale("log")
            else:
                # Linear below 1, logarithmic above: E is an integer, so E = 0 stays on the plot.
                ax.set_yscale("symlog", linthresh=1, linscale=0.5)
                ax.set_ylim(bottom=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        return self.save(fig, name, [ax], title)

    def emergence_and_accuracy_change(self, e_series: str) -> Path:
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        right = ax.twinx()
        self.draw(ax, e_series)
        # Bands only for E: two sets of bands on two axes would hide each other.
        self.draw(right, ACC_CHANGE, linestyle="--", marker="x", label=False, band=False)
        self.mark_fork(ax)
        right.axhline(0, color="0.7", linewidth=0.8)
        # Two legend entries explain the line styles; colours name the runs.
        ax.plot([], [], color="0.3", linestyle="-", marker="o", markersize=3, label="E (left axis)")
        ax.plot([], [], color="0.3", linestyle="--", marker="x", label="Δ training accuracy (right axis)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("emergence E")
        right.set_ylabel("change in training accuracy")
        return self.save(
            fig, "emergence_and_accuracy_change", [ax, right], "Emergence and change in training accuracy"
        )

    def losses(self, used: dict[str, str]) -> Path:
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        self.draw(ax, "train_loss")
        # A group with only a validation loss still needs its colour in the legend.
        only_val = {g: s for g, s in self.aggregated.items() if "train_loss" not in s}
        for group, by_series in self.aggregated.items():
            if "val_loss" in by_series:
                label = self.labels[group] if group in only_val else None
                _plot_mean_std(ax, by_series["val_loss"], self.colors[group], label, "--", "x", band=False)
        self.mark_fork(ax)
        for role, style, marker in (("train_loss", "-", "o"), ("val_loss", "--", "x")):
            if used[role]:  # the line styles explained, naming the tags drawn
                ax.plot([], [], color="0.3", linestyle=style, marker=marker, markersize=3, label=used[role])
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        return self.save(fig, "loss", [ax], "Loss")

    def active_shares(self, prefix: str) -> Path:
        share_prefix = f"{prefix}/active_share/"
        panels = {
            group: sorted((name for name in by_series if name.startswith(share_prefix)), key=_natural_key)
            for group, by_series in self.aggregated.items()
        }
        panels = {group: layers for group, layers in panels.items() if layers}
        columns = min(3, len(panels))
        rows = math.ceil(len(panels) / columns)
        fig = Figure(figsize=(max(6.0, 4.2 * columns), 3.4 * rows + 0.4), layout="constrained")
        # Shared axes put every run on the same epoch scale, so branches line up with their parent.
        axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).flatten()
        for ax, (group, layers) in zip(axes, panels.items()):
            for index, series in enumerate(layers):
                color = colormaps["tab10"](index % 10)
                _plot_mean_std(ax, self.aggregated[group][series], color, series.removeprefix(share_prefix))
            self.mark_fork(ax)
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelbottom=True)  # sharex hides them above a row that may be missing
            ax.set_title(self.labels[group], fontsize="medium")
            ax.set_xlabel("epoch")
            ax.set_ylabel("active / (active + dead)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="x-small", title="layer", title_fontsize="x-small")
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle("Share of active nodes per layer")
        path = self.out_dir / "active_fraction_per_layer.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return path
