"""EmergenceCallback's lifecycle: which run a measurement belongs to, and what a resume changed.

Each record carries ``run``: a second ``fit`` with the same callback object starts the next run,
and so does a resume whose settings differ from the checkpoint's. A checkpoint holds the settings
that change the numbers measured (``measurement_settings``); a resume compares them with the
callback's own and names each difference. Older checkpoints hold only the settings in the
callback's ``state_key`` (``EmergenceCallback{'threshold': 0.05, ...}``).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from emergence_lightning.callbacks.emergence_record import EmergenceRecord


def run_of_new_stage(history: list[EmergenceRecord], stage: str, run: int) -> tuple[int, str | None]:
    """The run a ``fit``/``validate`` starting now belongs to, and what to tell the user about it.

    A fit after earlier measurements starts a new run; a validate run after a fit belongs to it.
    """
    if stage != "fit" and run:
        return run, None
    new = history[-1].run + 1 if history else 1
    if not (history and stage == "fit"):
        return new, None
    return new, (
        f"EmergenceCallback: this callback already holds {len(history)} measurements of an earlier run; this "
        f"fit is run {new}: its records carry `run={new}`, it gets its own epoch-0 measurement (of the weights "
        "it starts from), and `stop_at_zero` counts only its own measurements."
    )


def resumed(
    state_dict: Mapping[str, Any], settings: Mapping[str, Any], run: int
) -> tuple[list[EmergenceRecord], int, str | None]:
    """The history and run a resume continues from a checkpoint's state, and a warning if settings changed."""
    history = [EmergenceRecord.from_history(entry) for entry in state_dict.get("history", [])]
    run = history[-1].run if history else max(run, 1)
    saved = state_dict.get("settings")
    changed = changes(saved, settings) if saved is not None else []
    if not changed:
        return history, run, None
    # The records before the resume measured something else: a new run keeps them apart.
    return (
        history,
        run + 1,
        (
            "EmergenceCallback: this resume measures with other settings than the checkpoint's history: "
            + "; ".join(changed)
            + f". The measurements from here on are run {run + 1} (their records carry `run={run + 1}`), the "
            "resumed weights are measured at their epoch (not as 'before training'), and the two runs are not "
            "comparable."
        ),
    )


def state_by_prefix(states: Mapping[str, Any], class_name: str, prefix: str) -> dict[str, Any] | None:
    """A callback's saved state found by its ``prefix`` (its ``state_key`` holds settings that may have
    changed since), with the settings its key held; None if there is none.
    """
    for key, saved in states.items():
        settings = state_key_settings(key, class_name)
        if settings is not None and settings.pop("prefix", None) == prefix:
            return {"settings": settings, **saved}
    return None


def changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"`name` a -> b"`` for each setting of ``current`` that ``saved`` holds with another value."""
    return [
        f"`{name}` {saved[name]!r} -> {current[name]!r}"
        for name in sorted(current)
        if name in saved and saved[name] != current[name]
    ]


def state_key_settings(key: str, class_name: str) -> dict[str, Any] | None:
    """The settings written in a ``state_key`` of ``class_name`` (``Name{'threshold': ...}``), else None."""
    name, brace, rest = key.partition("{")
    if name != class_name or not brace:
        return None
    try:
        settings = ast.literal_eval(brace + rest)
    except (ValueError, SyntaxError):
        return None
    return settings if isinstance(settings, dict) else None


def int_or_none(value: Any) -> int | None:
    """A Python int (numpy's integers are accepted as arguments), or None."""
    return None if value is None else int(value)


def plain_node_dim(node_dim: int | Mapping[str, int] | None) -> int | dict[str, int] | None:
    """``node_dim`` with Python ints and a plain dict (kept in checkpoints)."""
    if isinstance(node_dim, Mapping):
        return {name: int(dim) for name, dim in node_dim.items()}
    return int_or_none(node_dim)


def hparam_value(value: Any) -> Any:
    """A value a hyperparameter table shows: numbers, strings, bools and None as they are, others as text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def measurement_settings(callback: Any) -> dict[str, Any]:
    """An ``EmergenceCallback``'s settings that change what it measures or when it stops a run, as plain
    values (see ``EmergenceCallback.measurement_settings``).
    """
    probe = callback.probe_dataloader
    return {
        "threshold": callback.threshold,
        "statistic": callback.statistic,
        "variant": callback.variant,
        "layers": list(callback.layers) if callback.layers is not None else None,
        "node_dim": dict(callback.node_dim) if isinstance(callback.node_dim, Mapping) else callback.node_dim,
        "include_input": callback.include_input,
        "include_output": callback.include_output,
        "min_firing_rate": callback.min_firing_rate,
        "probe_dataloader": None if probe is None else f"{type(probe).__name__}({_samples(probe)} samples)",
        "probe_step": None
        if callback.probe_step is None
        else getattr(callback.probe_step, "__qualname__", repr(callback.probe_step)),
        "stop_at_zero": callback.stop_at_zero,
        "patience": callback.patience,
        "connectivity": callback.connectivity,
        "every_n_train_steps": callback.every_n_train_steps,
        "every_n_epochs": callback.every_n_epochs,
        "probe_batches": callback.probe_batches,
        "prefix": callback.prefix,
    }


def _samples(data: Any) -> int | None:
    """The number of samples of a dataloader (its dataset's length), or None when it has none."""
    try:
        return len(getattr(data, "dataset", data))
    except TypeError:
        return None
