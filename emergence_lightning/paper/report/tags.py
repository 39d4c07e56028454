"""Which logged scalar tags a report draws as accuracy and loss, and what a user names with ``--metric``.

``self.log("train_acc", acc, on_epoch=True)`` in ``training_step`` is stored as
``train_acc_step`` and ``train_acc_epoch``; users also log ``train/acc``, ``val_accuracy`` or a
torchmetrics object under its class name (``val_MulticlassAccuracy``). Which tag is which is
decided by the package's one detector, :func:`emergence_lightning.branching.monitor.classify`
(words split on ``/ _ - .``: a stage word and an accuracy or loss word), which also picks the
branches' monitor and TensorBoard's accuracy charts. Epoch-level tags win over ``*_step`` ones:
a report's x axis is epochs.

Example::

    choose_tags(["epoch", "train_acc_step", "train_acc_epoch", "val_acc"])
    # {'train_acc': 'train_acc_epoch', 'val_acc': 'val_acc', 'train_loss': None, 'val_loss': None}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from emergence_lightning.branching.monitor import (
    ROLES,
    VAL_WORDS,
    classify,
    is_accuracy,
    is_loss,
    preference,
    tag_words,
)


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
        stage = "val" if VAL_WORDS & set(tag_words(tag)) else "train"
        kind = "loss" if is_loss(tag) else "acc"
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
            chosen[role] = min(found, key=preference)
    for role, tag in assign_metrics(metrics).items():
        if tag in tags:
            chosen[role] = tag
    return chosen


def accuracy_like(tags: Iterable[str]) -> list[str]:
    """Tags that look like an accuracy or a loss but name no train/val stage: hints for ``--metric``."""
    hints = []
    for tag in sorted(set(tags)):
        if (is_accuracy(tag) or is_loss(tag)) and classify(tag) is None:
            hints.append(tag)
    return hints


def used_tags(chosen: dict[str, dict[str, str | None]]) -> dict[str, str]:
    """Role -> the tags the runs used for it, comma-joined: what a figure's axis label names."""
    return {
        role: ", ".join(sorted({tag for roles in chosen.values() if (tag := roles[role])})) for role in ROLES
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
