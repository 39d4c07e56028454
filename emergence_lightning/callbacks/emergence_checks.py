"""EmergenceCallback's checks: its arguments, and what makes a silently wrong measurement loud (the
warnings it gives, worded here so that the callback's hooks stay glue).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

from torch import Tensor, nn

from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.functional import check_variant
from emergence_lightning.measure import check_flags, check_tracking_arguments, parametrised_leaves
from emergence_lightning.measure.arguments import is_integer

# A model with at least this many parametrised leaf modules should show at least two layers.
MANY_PARAMETRISED_MODULES = 3


def duplicate_prefix_error(callbacks: Sequence[Any], kind: type[Any]) -> str | None:
    """The error message when two callbacks of ``kind`` share a ``prefix`` (their values would be averaged)."""
    seen: dict[str, tuple[int, Any]] = {}
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, kind):
            continue
        prefix = callback.prefix
        if prefix in seen:
            first_index, first_callback = seen[prefix]
            return (
                f"Two EmergenceCallbacks log under the same `prefix` {prefix!r}: callbacks[{first_index}] "
                f"({_describe(first_callback)}) and callbacks[{index}] ({_describe(callback)}). Lightning would "
                "log the mean of their values under one key. Give each its own `prefix=`, e.g. "
                f"`prefix='{prefix}_2'`."
            )
        seen[prefix] = (index, callback)
    return None


def _describe(callback: Any) -> str:
    return (
        f"EmergenceCallback(prefix={callback.prefix!r}, threshold={callback.threshold}, "
        f"statistic={callback.statistic!r}, layers={callback.layers!r})"
    )


def layer_coverage_warnings(model: nn.Module, names: Sequence[str], E: float) -> list[tuple[str, str]]:
    """``(key, message)`` for each reason to distrust a measurement with fewer than two layers."""
    if len(names) >= 2:
        return []
    leaves = parametrised_leaves(model)
    found = f"only {len(names)} tracked layer{'' if len(names) == 1 else 's'} ({list(names)})"
    warnings = []
    if len(leaves) >= MANY_PARAMETRISED_MODULES:
        shown = [name for name, _ in leaves[:6]] + (["..."] if len(leaves) > 6 else [])
        warnings.append(
            (
                "few-layers",
                f"EmergenceCallback found {found} in {type(model).__name__}, which has {len(leaves)} modules "
                f"with parameters ({shown}): the layers between them apply no activation the tracker sees. "
                "Name the layers to measure with `layers=[...]` (module names or call sites), or check that "
                "the forward pass runs through this module.",
            )
        )
    if E == 0 and len(names) == 1:
        warnings.append(
            (
                "one-layer-zero",
                f"EmergenceCallback: E is 0 because {found}: E counts paths from a dead node to an active node "
                "in a later layer, so one layer gives 0 whatever the weights. Track at least two layers "
                "(`layers=[...]`, or `include_input=True` / `include_output=True`).",
            )
        )
    return warnings


#: How E is counted: the paper's dense formula, or also on the graph the weights define.
Connectivity = Literal["dense", "weights"]
CONNECTIVITIES: tuple[str, ...] = get_args(Connectivity)


def check_callback_arguments(
    *,
    threshold: Any,
    statistic: Any,
    variant: Any,
    layers: Any,
    node_dim: Any,
    include_input: Any,
    include_output: Any,
    min_firing_rate: Any,
    probe_dataloader: Any,
    probe_step: Any,
    measure_at_start: Any,
    stop_at_zero: Any,
    patience: Any,
    log_histograms: Any,
    prefix: Any,
    connectivity: Any,
    every_n_train_steps: Any,
    every_n_epochs: Any,
    probe_batches: Any,
) -> None:
    """Raises on a bad ``EmergenceCallback`` argument, naming it and the value received."""
    check_tracking_arguments(threshold, statistic, min_firing_rate, node_dim, layers)
    check_variant(variant)
    if not is_integer(patience) or patience < 0:
        raise ValueError(f"`patience` must be an int >= 0, got {patience!r}.")
    if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
        raise ValueError(f"`prefix` must be a non-empty string not ending in '/', got {prefix!r}.")
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"`connectivity` must be one of {CONNECTIVITIES}, got {connectivity!r}.")
    for name, value in (
        ("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs), ("probe_batches", probe_batches)
    ):  # fmt: skip
        if value is not None and (not is_integer(value) or value < 1):
            raise ValueError(f"`{name}` must be an int >= 1 or None, got {value!r}.")
    if (every_n_train_steps is not None or every_n_epochs is not None) and probe_batches is None:
        cadence = "every_n_train_steps" if every_n_train_steps is not None else "every_n_epochs"
        raise ValueError(
            f"`{cadence}` measures a fixed probe set kept in memory, so it needs `probe_batches` (how many "
            f"batches to draw once at the start), got `probe_batches=None` with `{cadence}`="
            f"{every_n_train_steps if every_n_train_steps is not None else every_n_epochs}."
        )
    if probe_step is not None and not callable(probe_step):
        raise TypeError(f"`probe_step` must be callable, got {probe_step!r}.")
    check_flags(
        include_input=include_input,
        include_output=include_output,
        measure_at_start=measure_at_start,
        stop_at_zero=stop_at_zero,
        log_histograms=log_histograms,
    )
    if probe_dataloader is not None:
        if isinstance(probe_dataloader, (Tensor, str, bytes)) or not isinstance(probe_dataloader, Iterable):
            raise TypeError(
                "`probe_dataloader` must be a DataLoader (or any iterable of batches), got "
                f"{type(probe_dataloader).__name__}."
            )
        if state.length(probe_dataloader) == 0:
            raise ValueError(f"`probe_dataloader` has no batch to measure, got {probe_dataloader!r}.")


# ---- what the callback says ------------------------------------------------------------------
EMPTY_FIRST_LOADER = (
    "EmergenceCallback: the first validation dataloader gave no batch, so nothing was measured this epoch "
    "(the other dataloaders are not measured, so that every epoch sees the same data). Put the data to "
    "measure first, or pass `probe_dataloader=`."
)
PROBE_SET_CHANGED = (
    "EmergenceCallback: the probe set drawn at this resume differs from the one measured before the checkpoint "
    "(the data it is drawn from shuffles, or changed), so the measurements before and after the resume read "
    "different samples. Pass a `probe_dataloader` that does not shuffle to keep one probe set across resumes."
)


def measured_nothing(stage: str, prefix: str) -> str:
    return (
        f"EmergenceCallback measured nothing in this `trainer.{stage}` run: no batch reached a measurement (no "
        "validation or training batch, `limit_*_batches=0`, or `max_epochs=0`). Nothing was logged under "
        f"`{prefix}/`."
    )


def not_measured(stage: str) -> str:
    return (
        f"EmergenceCallback does not measure `trainer.{stage}` runs (emergence is a property of training; test "
        "data must not steer it). Call `trainer.validate(model, dataloaders)` to measure on given data."
    )


def other_loaders_unmeasured(count: int) -> str:
    return (
        f"EmergenceCallback measures the first of the {count} validation dataloaders only, so that every "
        "measurement reads the same samples (one series per run); the other dataloaders are not measured. To "
        "measure other data, put it first or pass `probe_dataloader=`; one EmergenceCallback per dataset needs "
        "its own `prefix`."
    )


def nonfinite(layers: Sequence[str], prefix: str) -> str:
    return (
        f"EmergenceCallback: layers {list(layers)} produced NaN or inf (has training diverged?): `{prefix}/E`, "
        "`log10_E` and `relative` are logged as NaN, not counted, so `EarlyStopping(check_finite=True)` stops on "
        "them and `stop_at_zero` does not count them."
    )


def zero_before_training(record: Any, patience: int) -> str:
    """``record``: the EmergenceRecord of the epoch-0 pass, whose E is 0."""
    return (
        "EmergenceCallback(stop_at_zero=True): E is already 0 before training (active nodes per layer "
        f"{dict(zip(record.names, record.a))} of {list(record.n)}). E counts paths from a dead node to an active "
        "node in a later layer, so with no dead node before the last active one it is 0 whatever the accuracy, "
        f"and training will stop after the next {patience + 1} measurements if it stays 0. Check that `layers` "
        "covers the hidden layers, or watch E before stopping on it."
    )
