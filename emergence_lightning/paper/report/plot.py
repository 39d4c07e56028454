"""Drawing for :mod:`emergence_lightning.paper.report`: the paper's figures, readable at print size.

Series come aggregated per group as ``(epochs, mean, std, count)``; see ``report._aggregate``.

What a reader must be able to do (issue 11): tell the branches apart. So each quantity has its own
axis (no twin axes), a run with a fork gets a second panel zoomed to the epochs after the fork
(the parent's early jumps set the scale of the whole-run panel, not of the branches'), a log axis is
used only where the values span more than a decade, and a branch keeps one colour in every figure
and every report: the colour comes from its name (``control``, ``pruned-30``...), not from the order.
"""

from __future__ import annotations

import math
import re
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from emergence_lightning.callbacks.prune_and_branch import PARENT  # the run the branches forked from

ACC_CHANGE = "train_acc_change"  # the derived series: epoch-to-epoch change in training accuracy
LOG_SPAN = 20.0  # a log axis only when the largest value is more than this many times the smallest

# Sized for a two-column paper: 7 in wide at 200 dpi, text 9-10 pt as printed.
WIDTH_IN = 7.0
DPI = 200
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.6,
    "lines.markersize": 3.5,
}

_FIXED = {PARENT: "#222222", "control": "#1f77b4", "random": "#8c564b", "random-dense": "#8c564b"}
_PRUNED = re.compile(r"(random-)?pruned-(\d+)")


def branch_name(label: str) -> str:
    """The branch (or ``parent``) a legend label names: its last path component, before any ``(...)``."""
    return label.split(" (")[0].rsplit("/", 1)[-1]


def branch_color(label: str) -> tuple[float, float, float, float] | str:
    """A fixed colour per branch name, the same in every figure and report.

    ``parent`` is near-black, ``control`` blue; ``pruned-<p>`` takes a shade of ``plasma`` set by
    ``p`` (more pruning, lighter), ``random-pruned-<p>`` a shade of green; any other name a tab10
    colour chosen by a hash of the name.
    """
    name = branch_name(label)
    if name in _FIXED:
        return _FIXED[name]
    match = _PRUNED.fullmatch(name)
    if match:
        amount = min(int(match.group(2)), 100) / 100
        if match.group(1):
            return colormaps["Greens"](0.45 + 0.5 * amount)
        return colormaps["plasma"](0.05 + 0.85 * amount)
    palette = [colormaps["tab10"](i) for i in (1, 2, 3, 4, 6, 8, 9)]  # no blue/brown: control, random
    return palette[zlib.crc32(name.encode()) % len(palette)]


def _natural_key(name: str) -> list:
    """Sort ``net.10`` after ``net.2``: layer names in forward order for sequential models."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _plot_mean_std(ax, stats, color, label, linestyle="-", marker="o", band=True) -> None:
    """A group's mean line, and a ±1 std band when it averages several runs."""
    x, mean, std, count = stats
    ax.plot(x, mean, linestyle=linestyle, marker=marker, color=color, label=label)
    if band and count.max() > 1:
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _padded(low: float, high: float, log: bool) -> tuple[float, float]:
    if log:
        return low / 1.15, high * 1.15
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1e-3)
    return low - pad, high + pad


@contextmanager
def _style():
    with rc_context(STYLE):
        yield


class Plotter:
    """Draws the groups' curves with one colour per branch across every figure.

    ``drawn`` keeps each figure by name after it is saved, so what was drawn (axis limits, line
    starts, labels) can be read back.
    """

    def __init__(self, aggregated, labels: dict[str, str], fork: int | None, out_dir: Path) -> None:
        self.aggregated = aggregated
        self.labels = labels
        self.fork = fork
        self.out_dir = out_dir
        self.colors = {group: branch_color(label) for group, label in labels.items()}
        self.drawn: dict[str, Figure] = {}
        # One epoch axis for every figure: E from 0 and accuracy from 1 line up figure to figure.
        xs = [by_series[s][0] for by_series in aggregated.values() for s in by_series if len(by_series[s][0])]
        self.epochs = (float(min(x.min() for x in xs)), float(max(x.max() for x in xs))) if xs else (0.0, 1.0)

    def set_epochs(self, ax, after_fork: bool = False) -> None:
        """The x range of a whole-run panel (every epoch of the report) or a zoomed one (from the fork)."""
        first, last = self.epochs
        if after_fork and self.fork is not None:  # zoomed panels are drawn only for a forked run
            ax.set_xlim(self.fork - 0.3, last + 0.3)
        else:
            pad = max(0.3, 0.04 * (last - first))
            ax.set_xlim(first - pad, last + pad)

    def has(self, series: str) -> bool:
        return any(series in by_series for by_series in self.aggregated.values())

    def _points(self, series: str, after_fork: bool = False) -> np.ndarray:
        """Every group's mean values of ``series`` (only at epochs >= the fork with ``after_fork``).

        A zoomed panel shows the epochs from the fork on, so every point there sets its y range,
        the parent's at the fork included (every branch line starts from it): none is clipped.
        """
        values = []
        for by_series in self.aggregated.values():
            if series in by_series:
                x, mean = by_series[series][:2]
                if after_fork:
                    mean = mean[x >= self.fork]
                values.append(mean)
        points = np.concatenate(values) if values else np.array([])
        return points[np.isfinite(points)]

    def minimum(self, series: str) -> float:
        return float(self._points(series).min())

    def _zoomed(self, series: str) -> bool:
        """A second panel after the fork, when there is a fork and values after it."""
        return self.fork is not None and self._points(series, after_fork=True).size > 0

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

    def _scale(self, ax, series: str, log: bool, after_fork: bool) -> None:
        """y limits from the values shown (after the fork for a zoomed panel); log only over a wide span."""
        self.set_epochs(ax, after_fork)
        values = self._points(series, after_fork)
        if not values.size:
            return
        low, high = float(values.min()), float(values.max())
        use_log = log and low > 0 and high / low > LOG_SPAN
        if use_log:
            ax.set_yscale("log")
        ax.set_ylim(*_padded(low, high, use_log))

    def _row(self, axes, series: str, ylabel: str, log: bool = False, **draw) -> None:
        """One quantity: the whole run, and the epochs after the fork when there is one."""
        for index, ax in enumerate(axes):
            self.draw(ax, series, **draw)
            self.mark_fork(ax)
            self._scale(ax, series, log, after_fork=index == 1)
            ax.grid(True, alpha=0.3)
            ax.set_ylabel(ylabel)
        if len(axes) > 1:
            axes[1].set_title("after the fork", fontsize="small")

    def _figure(self, rows: int, zoom: bool) -> tuple[Figure, np.ndarray]:
        fig = Figure(figsize=(WIDTH_IN, 2.6 * rows + 0.5), layout="constrained")
        # Panels stacked in a column compare the same epochs: one x range, the fork line at one place.
        axes = fig.subplots(rows, 2 if zoom else 1, squeeze=False, sharex="col")
        return fig, axes

    def save(self, fig: Figure, name: str, axes, title: str) -> Path:
        handles, labels = [], []
        for ax in np.ravel(axes):
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        fig.suptitle(title)
        # One legend for the figure, below the panels: no curve hides behind it.
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False)
        for ax in np.ravel(axes)[-2:]:
            ax.set_xlabel("epoch")
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        self.drawn[name] = fig
        return path

    def single(self, name: str, series: str, ylabel: str, title: str, yscale: str | None = None) -> Path:
        """One quantity per epoch; with ``yscale="log"`` a panel whose values span over 20x gets a log axis.

        Whichever scale a panel got, its y label and the title say it (``(log scale)``).
        """
        with _style():
            fig, axes = self._figure(1, self._zoomed(series))
            self._row(axes[0], series, ylabel, log=yscale == "log")
            logs = [ax.get_yscale() == "log" for ax in axes[0]]
            for ax, log in zip(axes[0], logs):
                if log:
                    ax.set_ylabel(f"{ylabel} (log scale)")
            if all(logs):
                title = f"{title}, log y axis"
            elif any(logs):
                title = f"{title}, log y axis for the whole run"
            return self.save(fig, name, axes, title)

    def emergence_and_accuracy_change(self, e_series: str) -> Path:
        """E, and below it the epoch-to-epoch change in training accuracy: two axes, two scales."""
        with _style():
            fig, axes = self._figure(2, self._zoomed(e_series) or self._zoomed(ACC_CHANGE))
            self._row(axes[0], e_series, "emergence E")
            self._row(axes[1], ACC_CHANGE, "Δ training accuracy", band=False, marker="x")
            for ax in axes[1]:
                ax.axhline(0, color="0.6", linewidth=0.8)
            return self.save(
                fig, "emergence_and_accuracy_change", axes, "Emergence and change in training accuracy"
            )

    def losses(self, used: dict[str, str]) -> Path:
        """Training loss (solid) and validation loss (dashed): one quantity, one scale."""
        series = [role for role in ("train_loss", "val_loss") if used[role] and self.has(role)]
        with _style():
            fig, axes = self._figure(1, any(self._zoomed(s) for s in series))
            for index, ax in enumerate(axes[0]):
                for role, style, marker in (("train_loss", "-", "o"), ("val_loss", "--", "x")):
                    if role in series:
                        # `save` lists each run once; the line styles get their own entries below.
                        self.draw(ax, role, linestyle=style, marker=marker, band=role == "train_loss")
                self.mark_fork(ax)
                values = np.concatenate([self._points(s, after_fork=index == 1) for s in series])
                if values.size:
                    ax.set_ylim(*_padded(float(values.min()), float(values.max()), log=False))
                self.set_epochs(ax, after_fork=index == 1)
                if index == 1:
                    ax.set_title("after the fork", fontsize="small")
                ax.grid(True, alpha=0.3)
                ax.set_ylabel("loss")
            for role, style, marker in (("train_loss", "-", "o"), ("val_loss", "--", "x")):
                if role in series:  # the line styles explained, naming the tags drawn
                    axes[0][0].plot([], [], color="0.3", linestyle=style, marker=marker, label=used[role])
            return self.save(fig, "loss", axes, "Loss")

    def active_shares(self, prefix: str, sizes: dict[str, int] | None = None) -> Path:
        """One panel per run: each layer's share of active nodes, labelled with the layer's size."""
        share_prefix = f"{prefix}/active_share/"
        sizes = sizes or {}
        panels = {
            group: sorted((name for name in by_series if name.startswith(share_prefix)), key=_natural_key)
            for group, by_series in self.aggregated.items()
        }
        panels = {group: layers for group, layers in panels.items() if layers}
        columns = min(2, len(panels))
        rows = math.ceil(len(panels) / columns)
        with _style():
            fig = Figure(figsize=(WIDTH_IN, 2.4 * rows + 0.6), layout="constrained")
            # A shared x axis puts every run on the same epoch scale, so branches line up with their
            # parent; each panel's y axis is scaled to its own shares (a fixed 0-1 flattens 0.91 -> 0.95).
            axes = fig.subplots(rows, columns, sharex=True, squeeze=False).flatten()
            ranges = {}
            for ax, (group, layers) in zip(axes, panels.items()):
                shown = []
                for index, series in enumerate(layers):
                    layer = series.removeprefix(share_prefix)
                    label = f"{layer} ({sizes[layer]} nodes)" if layer in sizes else layer
                    stats = self.aggregated[group][series]
                    _plot_mean_std(ax, stats, colormaps["tab10"](index % 10), label)
                    shown.append(stats[:2])
                self.mark_fork(ax)
                self.set_epochs(ax)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.tick_params(labelbottom=True)  # sharex hides them above a row that may be missing
                ax.set_title(self.labels[group], color=self.colors[group])
                ax.set_xlabel("epoch")
                ax.set_ylabel("active share")
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize="x-small", title="layer", title_fontsize="x-small")
                values = np.concatenate([mean for _, mean in shown])
                values = values[np.isfinite(values)]
                if values.size:
                    branch = self.fork is not None and min(x.min() for x, _ in shown) >= self.fork
                    ranges[ax] = (float(values.min()), float(values.max()), branch)
            # Runs that start at the fork (the branches) are compared panel to panel: one y range.
            branch_values = [v for low, high, branch in ranges.values() if branch for v in (low, high)]
            for ax, (low, high, branch) in ranges.items():
                if branch:
                    low, high = min(branch_values), max(branch_values)
                low, high = _padded(low, high, log=False)
                ax.set_ylim(max(low, -0.02), min(high, 1.02))  # a share is in [0, 1]
            for ax in axes[len(panels) :]:
                ax.set_visible(False)
            fig.suptitle("Share of active nodes per layer: active / (active + dead)")
            path = self.out_dir / "active_fraction_per_layer.png"
            fig.savefig(path, dpi=DPI)
            self.drawn["active_fraction_per_layer"] = fig
            return path
