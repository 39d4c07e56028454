"""Which metric branches are compared on, and how fast each converged. No Lightning import."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence


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


# ---- the one detector of accuracy and loss tags: branches' monitor, reports, TensorBoard charts ----
# Lightning and torchmetrics write `train_acc`, `train_acc_epoch` (self.log(..., on_epoch=True)),
# `train/acc`, `val_accuracy`, `val_MulticlassAccuracy`, `val/top1`. A tag is split into words; a
# stage word says whose metric it is, an accuracy word or `...loss` what it is.

#: What the detector finds: the training and validation accuracy and loss.
ROLES = ("train_acc", "val_acc", "train_loss", "val_loss")
TRAIN_WORDS = frozenset({"train", "training"})
VAL_WORDS = frozenset({"val", "valid", "validation"})
#: A whole word that is an accuracy: `acc`, `acc1`, `top1`, `top5`, or one ending in `accuracy`.
ACCURACY_WORD = re.compile(r"acc\d*|top\d+|[a-z]*accuracy")
#: Prefix of the end-of-run scalars (final and best metric, E at the end...), one point per run: no
#: curve and no monitor. TensorBoard's Scalars dashboard sorts it after `emergence` and `epoch`.
SUMMARY = "summary"
WORD_SPLIT = re.compile(r"[/_\-.\s]+")


def tag_words(tag: str) -> list[str]:
    """``tag`` in lower-case words: ``"val/MulticlassAccuracy_epoch"`` -> ``["val", "multiclassaccuracy", "epoch"]``."""
    return [word for word in WORD_SPLIT.split(tag.lower()) if word]


def is_accuracy(tag: str) -> bool:
    """Whether a word of ``tag`` names an accuracy (a stage word is not needed).

    Example:
        >>> is_accuracy("val_MulticlassAccuracy"), is_accuracy("top5"), is_accuracy("val_loss")
        (True, True, False)
    """
    return any(ACCURACY_WORD.fullmatch(word) for word in tag_words(tag))


def is_loss(tag: str) -> bool:
    """Whether a word of ``tag`` names a loss (``loss``, ``val_nll_loss``, ``train/celoss``)."""
    return any(word.endswith("loss") for word in tag_words(tag))


def classify(tag: str) -> str | None:
    """The role of ``tag`` (one of :data:`ROLES`), or None when it is no train/val accuracy or loss.

    Example:
        >>> classify("train_acc_epoch"), classify("valid/top1"), classify("accuracy"), classify("summary/final_val_acc")
        ('train_acc', 'val_acc', None, None)
    """
    if tag.startswith(f"{SUMMARY}/"):
        return None  # one point per run (final/best figures), not a curve
    words = set(tag_words(tag))
    stage = "val" if VAL_WORDS & words else "train" if TRAIN_WORDS & words else None
    if stage is None:
        return None
    if is_accuracy(tag):
        return f"{stage}_acc"
    if is_loss(tag):
        return f"{stage}_loss"
    return None


def preference(tag: str) -> tuple:
    """Sort key among tags of one role: epoch-level values first (``*_step`` last), then the plainest name."""
    words = tag_words(tag)
    return (bool(words) and words[-1] == "step", len(words), tag)


def role_pattern(role: str) -> str:
    """An anchored regex of the epoch-level tags of ``role`` in their usual spelling, for TensorBoard's charts.

    Stricter than :func:`classify` (stage first, then the metric, ``_epoch`` optional: no ``*_step``
    values on an epoch chart); every tag it matches, :func:`classify` gives ``role``.
    """
    stage, kind = role.split("_")
    words = sorted(TRAIN_WORDS if stage == "train" else VAL_WORDS)
    # ACCURACY_WORD in a tag's own case: `val_MulticlassAccuracy` keeps its capital.
    metric = r"(acc\d*|top\d+|[A-Za-z]*[Aa]ccuracy)" if kind == "acc" else "loss"
    return rf"^({'|'.join(words)})[_/]{metric}(_epoch)?$"


def pick_monitor(keys: Iterable[str]) -> tuple[str, str] | None:
    """The metric to compare branches on, and its mode, from the keys a model logs.

    Validation accuracy when there is one, else validation loss, else any accuracy (the tag
    detector's, :func:`classify`, :func:`is_accuracy`); ``None`` if none of these is logged.

    Example:
        >>> pick_monitor(["train_loss", "val_loss", "val_acc"])
        ('val_acc', 'max')
    """
    keys = [key for key in keys if not key.startswith(("emergence/", f"{SUMMARY}/")) and key != "epoch"]
    for role, mode in (("val_acc", "max"), ("val_loss", "min")):
        found = [key for key in keys if classify(key) == role]
        if found:
            return min(found, key=preference), mode
    accuracies = [key for key in keys if is_accuracy(key)]
    return (min(accuracies, key=preference), "max") if accuracies else None
