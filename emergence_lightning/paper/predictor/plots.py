"""Scatter plots of the study: each proxy against final accuracy, one panel per proxy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emergence_lightning.paper.predictor.study import final_accuracy, proxy_values

# Proxies spanning orders of magnitude are drawn on log10 (E itself, synflow, #params).
LOG_SCALE = {"E at init", "E~ at init", "E after epoch 1", "synflow", "#params"}
MARKERS = {"relu": "o", "gelu": "s", "tanh": "^"}
COLOURS = {"mlp": "tab:blue", "cnn": "tab:orange"}


def _x(proxy: str, value: float) -> float:
    if proxy in LOG_SCALE:
        return math.log10(value + 1) if value >= 0 and math.isfinite(value) else math.nan
    return value if math.isfinite(value) else math.nan


def scatter_grid(
    records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """One panel per proxy (x: the proxy, log10(x + 1) where marked; y: final accuracy), tau in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proxies = [row["proxy"] for row in rows]
    taus = {row["proxy"]: row["kendall_tau"] for row in rows}
    columns = 3
    lines = math.ceil(len(proxies) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.3 * lines), squeeze=False)
    accuracy = [final_accuracy(r) for r in records]
    values = [proxy_values(r) for r in records]
    for axis, proxy in zip(axes.flat, proxies):
        for record, acc, value in zip(records, accuracy, values):
            activation = record["name"].rsplit("-", 1)[-1]
            axis.scatter(
                _x(proxy, value[proxy]), acc, s=14, alpha=0.75,
                marker=MARKERS.get(activation, "o"), color=COLOURS.get(record["family"], "tab:gray"),
            )  # fmt: skip
        label = f"log10({proxy} + 1)" if proxy in LOG_SCALE else proxy
        axis.set_xlabel(label, fontsize=8)
        axis.set_ylabel("final val. accuracy", fontsize=8)
        axis.set_title(f"{proxy}: τ = {taus[proxy]:+.2f}", fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(proxies) :]:
        axis.axis("off")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f) for f, c in COLOURS.items()]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="", label=a) for a, m in MARKERS.items()]
    figure.legend(handles=handles, loc="upper right", fontsize=8, ncol=5, frameon=False)
    if title:
        figure.suptitle(title + " (NASWOT -inf not drawn)", fontsize=11, x=0.02, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def stopping_figure(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """E (log10 E + 1) and validation accuracy per epoch of every run: when does E reach 0?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for record in records:
        epochs = [e["epoch"] for e in record["epochs"]]
        colour = COLOURS.get(record["family"], "tab:gray")
        left.plot(epochs, [e["log10_E"] for e in record["epochs"]], color=colour, alpha=0.35, lw=0.8)
        right.plot(epochs[1:], [e["val_acc"] for e in record["epochs"][1:]], color=colour, alpha=0.35, lw=0.8)
    left.set_xlabel("epoch")
    left.set_ylabel("log10(E + 1)")
    left.set_title("E per epoch (0 = before training)")
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    right.set_title("validation accuracy per epoch")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
