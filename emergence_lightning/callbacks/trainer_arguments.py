"""The branch Trainer's arguments: numbers checked as given, and the ones an experiment record holds.

What changes a branch's numbers is recorded (``experiment.json``, see
:mod:`~emergence_lightning.branching.store`); where a run writes and what it prints is not. The
Trainer itself is built by :mod:`~emergence_lightning.callbacks.trainer_factory`.
"""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

#: Trainer arguments that take a whole number (or None where the Trainer's default is None).
INTEGER_TRAINER_KWARGS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "check_val_every_n_epoch",
    "log_every_n_steps",
    "accumulate_grad_batches",
    "num_sanity_val_steps",
    "reload_dataloaders_every_n_epochs",
    "num_nodes",
)
#: Trainer arguments that take a number: a whole one (batches) or a fraction.
NUMBER_TRAINER_KWARGS = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "overfit_batches",
    "val_check_interval",
    "gradient_clip_val",
)
#: Trainer arguments that change where a branch writes or what it prints, not its numbers: left
#: out of the experiment record. The device layout is recorded as ``processes`` instead (a branch
#: job may train on another accelerator than the parent's; see ``docs/prune-and-branch.md``).
UNRECORDED_TRAINER_KWARGS = (
    "accelerator",
    "barebones",
    "callbacks",
    "default_root_dir",
    "detect_anomaly",
    "devices",
    "enable_checkpointing",
    "enable_model_summary",
    "enable_progress_bar",
    "logger",
    "log_every_n_steps",
    "num_nodes",
    "num_sanity_val_steps",
    "plugins",
    "profiler",
    "strategy",
)


def checked_number(key: str, value: Any) -> Any:
    """A numeric Trainer argument as a Python number (numpy scalars accepted); other arguments as given."""
    if key not in INTEGER_TRAINER_KWARGS and key not in NUMBER_TRAINER_KWARGS:
        return value
    default = inspect.signature(pl.Trainer.__init__).parameters[key].default
    if value is None and default is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if key in NUMBER_TRAINER_KWARGS and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    kind = "a whole number" if key in INTEGER_TRAINER_KWARGS else "a number"
    raise TypeError(
        f"`trainer_kwargs['{key}']` must be {kind}{' or None' if default is None else ''}, got {value!r}."
    )


def global_flags() -> dict[str, Any]:
    """The global flags a Trainer sets as it is built: deterministic algorithms, cuDNN, cuBLAS workspace."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def restore_global_flags(flags: Mapping[str, Any]) -> None:
    """Puts back what :func:`global_flags` returned."""
    torch.use_deterministic_algorithms(flags["deterministic"], warn_only=flags["warn_only"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    if flags["cublas"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags["cublas"]


def recorded_trainer_settings(kwargs: Mapping[str, Any], processes: int | str) -> dict[str, Any]:
    """The branch Trainer's arguments that change its numbers, Lightning's defaults filled in, for the experiment record.

    ``kwargs``: the parent's settings and ``trainer_kwargs`` over them; ``processes``: how many
    processes train each branch (a DDP branch sees other batches than a one-process one).
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(pl.Trainer.__init__).parameters.items()
        if name != "self"
    }
    recorded = {
        key: value for key, value in {**defaults, **kwargs}.items() if key not in UNRECORDED_TRAINER_KWARGS
    }
    recorded["processes"] = processes
    return recorded


def processes_of(kwargs: Mapping[str, Any]) -> int | str:
    """How many processes a Trainer with these ``devices`` and ``num_nodes`` trains on (``"auto"`` when it decides)."""
    devices = kwargs.get("devices", "auto")
    if isinstance(devices, numbers.Integral) and int(devices) > 0:
        count: int | str = int(devices)
    elif isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and devices.strip().isdigit():
        count = int(devices)
    else:
        return str(devices)
    return count * int(kwargs.get("num_nodes", 1) or 1)
