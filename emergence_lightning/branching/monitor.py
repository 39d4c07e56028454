"""Which metric branches are compared on, and how fast each converged. No Lightning import."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def epochs_to_fraction_of_final(
    values: Sequence[float], fraction: float = 0.99, mode: str = "max"
) -> int | None:
    """Epochs (1-based, one value per epoch) until the metric first came within ``fraction`` of its final value.

    With ``mode="max"`` (accuracy) that is the first value ``>= fraction * final``; with
    ``mode="min"`` (a loss) the first value ``<= final / fraction``. ``None`` without a finite final value.

    Example:
        >>> epochs_to_fraction_of_final([0.5, 0.90, 0.955, 0.96])
        3
        >>> epochs_to_fraction_of_final([2.0, 1.0, 0.5], mode="min")
        3
    """
    if mode not in ("max", "min"):
        raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
    if not values or not math.isfinite(values[-1]):
        return None
    final = values[-1]
    if mode == "max":
        target = fraction * final if final >= 0 else final / fraction
        reached = (value >= target for value in values)
    else:
        target = final / fraction if final >= 0 else final * fraction
        reached = (value <= target for value in values)
    for epoch, hit in enumerate(reached, start=1):
        if hit:
            return epoch
    return len(values)


def metric_figures(values_by_epoch: Mapping[int, float], mode: str) -> dict[str, Any]:
    """The final and best value of a metric, the epoch of the best, and epochs to 99 % of the final.

    ``values_by_epoch``: the metric after each epoch (epochs completed -> value); non-finite values
    are never the best. The one computation behind every summary row, the parent's and each branch's.

    Example:
        >>> metric_figures({1: 0.5, 2: 0.9, 3: 0.8}, "max")
        {'final': 0.8, 'best': 0.9, 'best_epoch': 2, 'epochs_to_99': 2}
    """
    epochs = sorted(values_by_epoch)
    values = [values_by_epoch[epoch] for epoch in epochs]
    finite = [value for value in values if math.isfinite(value)]
    best = (max(finite) if mode == "max" else min(finite)) if finite else None
    return {
        "final": values[-1] if values else None,
        "best": best,
        "best_epoch": epochs[values.index(best)] if best is not None else None,
        "epochs_to_99": epochs_to_fraction_of_final(values, 0.99, mode) if values else None,
    }


_VAL_ACC = re.compile(r"val.*acc", re.IGNORECASE)
_VAL_LOSS = re.compile(r"val.*loss", re.IGNORECASE)
_ACC = re.compile(r"acc", re.IGNORECASE)


def pick_monitor(keys: Iterable[str]) -> tuple[str, str] | None:
    """The metric to compare branches on, and its mode, from the keys a model logs.

    Validation accuracy when there is one, else validation loss, else any accuracy; ``None`` if
    none of these is logged.

    Example:
        >>> pick_monitor(["train_loss", "val_loss", "val_acc"])
        ('val_acc', 'max')
    """
    keys = [key for key in keys if not key.startswith(("emergence/", "summary/")) and key != "epoch"]
    for pattern, mode in ((_VAL_ACC, "max"), (_VAL_LOSS, "min"), (_ACC, "max")):
        matches = sorted((key for key in keys if pattern.search(key)), key=lambda k: (len(k), k))
        if matches:
            return matches[0], mode
    return None
