"""Which logged scalar tags hold accuracy and loss: the names Lightning and torchmetrics write.

``self.log("train_acc", acc, on_epoch=True)`` in ``training_step`` is stored as
``train_acc_step`` and ``train_acc_epoch``; users also log ``train/acc``, ``val_accuracy`` or a
torchmetrics object under its class name (``val_MulticlassAccuracy``). A tag is split into words
(on ``/ _ - .``), a stage word (``train``/``training`` or ``val``/``valid``/``validation``) says
whose metric it is, and an accuracy word (``acc``, ``accuracy``, ``...Accuracy``, ``top1``) or
``loss`` says what it is. Epoch-level tags win over ``*_step`` ones: a report's x axis is epochs.

Example::

    choose_tags(["epoch", "train_acc_step", "train_acc_epoch", "val_acc"])
    # {'train_acc': 'train_acc_epoch', 'val_acc': 'val_acc', 'train_loss': None, 'val_loss': None}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

ROLES = ("train_acc", "val_acc", "train_loss", "val_loss")
TRAIN_WORDS = frozenset({"train", "training"})
VAL_WORDS = frozenset({"val", "valid", "validation"})
ACCURACY_WORDS = frozenset({"acc", "acc1", "accuracy", "top1"})
#: End-of-run summaries (tensorboard_views.SUMMARY): `summary/final_val_acc` is no accuracy curve.
END_OF_RUN_PREFIX = "summary/"
WORD_SPLIT = re.compile(r"[/_\-.\s]+")


def _words(tag: str) -> list[str]:
    return [word for word in WORD_SPLIT.split(tag.lower()) if word]


def classify(tag: str) -> str | None:
    """The role of ``tag`` (one of :data:`ROLES`), or None when it is not a train/val accuracy or loss."""
    if tag.startswith(END_OF_RUN_PREFIX):
        return None  # one point per run (final/best figures), not a curve
    words = _words(tag)
    stage = "val" if VAL_WORDS & set(words) else "train" if TRAIN_WORDS & set(words) else None
    if stage is None:
        return None
    if any(word in ACCURACY_WORDS or word.endswith("accuracy") for word in words):
        return f"{stage}_acc"
    if any(word == "loss" or word.endswith("loss") for word in words):
        return f"{stage}_loss"
    return None


def _preference(tag: str) -> tuple:
    # Per-step values last (epochs are the x axis); then the plainest name: fewer extra words.
    words = _words(tag)
    return (words[-1] == "step", len(words), tag)


def parse_metrics(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``--metric`` values, each a tag or a comma-separated list of tags, flattened in order."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    tags = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"`metrics` must hold tag strings, got {value!r}.")
        tags += [part.strip() for part in value.split(",") if part.strip()]
    return tuple(dict.fromkeys(tags))


def assign_metrics(metrics: Sequence[str]) -> dict[str, str]:
    """Roles of the tags a user named: a validation tag (by its words) is ``val_*``, any other ``train_*``.

    A tag whose words say loss is a loss; every other named tag is taken as an accuracy, so
    ``--metric top5`` plots ``top5`` as training accuracy. The first tag named for a role wins.
    """
    roles: dict[str, str] = {}
    for tag in metrics:
        words = set(_words(tag))
        stage = "val" if VAL_WORDS & words else "train"
        kind = "loss" if any(word.endswith("loss") for word in words) else "acc"
        roles.setdefault(f"{stage}_{kind}", tag)
    return roles


def choose_tags(
    tags: Iterable[str], metrics: Sequence[str] = (), exclude_prefix: str | None = None
) -> dict[str, str | None]:
    """The tag to use for each role among one run's ``tags``.

    Args:
        tags: the run's scalar tags.
        metrics: tags the user named (``--metric``); a named tag the run has overrides detection
            for its role (see :func:`assign_metrics`).
        exclude_prefix: tags under ``<exclude_prefix>/`` (EmergenceCallback's) are never detected.

    Returns:
        Role (:data:`ROLES`) -> chosen tag, or None when the run has none.
    """
    tags = set(tags)
    chosen: dict[str, str | None] = dict.fromkeys(ROLES)
    candidates: dict[str, list[str]] = {role: [] for role in ROLES}
    for tag in tags:
        if exclude_prefix and tag.startswith(f"{exclude_prefix}/"):
            continue
        role = classify(tag)
        if role is not None:
            candidates[role].append(tag)
    for role, found in candidates.items():
        if found:
            chosen[role] = min(found, key=_preference)
    for role, tag in assign_metrics(metrics).items():
        if tag in tags:
            chosen[role] = tag
    return chosen


def accuracy_like(tags: Iterable[str]) -> list[str]:
    """Tags that look like an accuracy or a loss but name no train/val stage: hints for ``--metric``."""
    hints = []
    for tag in sorted(set(tags)):
        words = _words(tag)
        is_metric = any(w in ACCURACY_WORDS or w.endswith(("accuracy", "loss")) for w in words)
        if is_metric and classify(tag) is None:
            hints.append(tag)
    return hints


def used_tags(chosen: dict[str, dict[str, str | None]]) -> dict[str, str]:
    """Role -> the tags the runs used for it, comma-joined: what a figure's axis label names."""
    return {
        role: ", ".join(sorted({roles[role] for roles in chosen.values() if roles[role]})) for role in ROLES
    }


def missing_reason(what: str, tags: set[str], prefix: str) -> str:
    """Why a figure of ``what`` is left out, with the tags that might be it (for ``--metric``)."""
    looked_for = {
        "training accuracy": "`train_acc`, `train_acc_epoch`, `train/acc`, `train_MulticlassAccuracy`...",
        "validation accuracy": "`val_acc`, `val_acc_epoch`, `val/acc`, `val_MulticlassAccuracy`...",
    }.get(what, "`train_loss`, `val_loss_epoch`, `train/loss`...")
    hints = accuracy_like(tag for tag in tags if not tag.startswith(prefix + "/"))
    hint = f"; tags that might be it: {hints} (name one with --metric / `metrics`)" if hints else ""
    return f"no {what} tag in any run (looked for {looked_for}){hint}"
