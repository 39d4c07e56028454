"""Every private Lightning, torchmetrics and torch name the package uses, one probe each.

The package uses a public API wherever one exists. What is left, names with no public equivalent,
is read only through this module, and each is listed below with what needs it. The probes
(:func:`missing_torch_names`, :func:`missing_attribute`, :func:`check_attributes`) are run by
``tests/test_compat.py`` on the installed versions, so a Lightning or torch release that moves a
name fails a test that names it; the callbacks run :func:`check_attributes` at ``setup`` for the
names they cannot work without.

No Lightning import here (this module sits below the pure tiers): the Lightning and torchmetrics
names are attributes of objects the callers pass in.

Example:
    >>> from torch import nn
    >>> missing_attribute(nn.Linear(2, 2), "_forward_pre_hooks") is None
    True
    >>> missing_attribute(nn.Linear(2, 2), "weight.not_there")
    'not_there'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PrivateName:
    """One private name: where it lives, the attribute path, and what needs it."""

    owner: str
    path: str
    used_by: str

    @property
    def qualified(self) -> str:
        return f"{self.owner}.{self.path}"


# ---- torch: module-level names, probed by import -----------------------------------------------
TORCH_NAMES = (
    PrivateName(
        "torch.overrides",
        "_push_mode",
        "measure/interception.py, tracker.py: the mode on and off, left below others",
    ),
    PrivateName(
        "torch.overrides",
        "_pop_mode",
        "measure/interception.py, tracker.py: the mode on and off, left below others",
    ),
    PrivateName(
        "torch.overrides", "_get_current_function_mode_stack", "measure/interception.py: is our mode active"
    ),
    PrivateName(
        "torch.overrides",
        "_get_current_function_mode",
        "measure/interception.py, tracker.py: the innermost mode",
    ),
    PrivateName("torch._C", "DisableTorchFunction", "measure/: statistics without re-entering our mode"),
    PrivateName("torch._C", "_nn", "measure/layers.py: activations torch.nn.functional calls there"),
    PrivateName("torch._dynamo.eval_frame", "OptimizedModule", "measure/compile_guard.py: torch.compile(m)"),
)

#: Private attributes of torch objects (instances), probed on fresh ones.
TORCH_ATTRIBUTES = (
    PrivateName("torch.nn.Module", "_forward_pre_hooks", "pruning/, connectivity/: pruning's mask hooks"),
    PrivateName("torch.nn.Module", "_compiled_call_impl", "measure/compile_guard.py: module.compile()"),
    PrivateName(
        "torch.nn.Module",
        "_modules",
        "measure/layers.py: every window walks the module tree (2x named_children)",
    ),
    PrivateName(
        "torch.nn.utils.prune.BasePruningMethod", "_tensor_name", "pruning/masks.py: the tensor a hook masks"
    ),
    PrivateName(
        "torch.compile(function)", "_torchdynamo_orig_callable", "measure/compile_guard.py: compiled methods"
    ),
)

# ---- Lightning and torchmetrics: attributes of the objects the callbacks hold ------------------
#: Read (or, for the progress counters, written) by callbacks/trainer_factory.py and lightning_state.py:
#: Lightning has no public way to copy a Trainer's settings or to continue a fit's step counters.
TRAINER_ATTRIBUTES = (
    "_accelerator_connector.use_distributed_sampler",
    "_accelerator_connector._layer_sync",
    "_detect_anomaly",
    "_val_check_time_interval",
    "fit_loop._data_source",
    "fit_loop.epoch_loop._batches_that_stepped",
    "fit_loop.epoch_loop.val_loop._data_source",
    "fit_loop.epoch_progress.total.completed",
    "fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed",
    "fit_loop.epoch_loop.manual_optimization.optim_step_progress.total.completed",
)
#: The parent's DDP settings a branch's fresh DDPStrategy takes (callbacks/trainer_factory.py).
DDP_STRATEGY_ATTRIBUTES = (
    "_start_method",
    "_ddp_comm_state",
    "_ddp_comm_hook",
    "_ddp_comm_wrapper",
    "_model_averaging_period",
    "_process_group_backend",
    "_timeout",
    "_ddp_kwargs",
)
#: `self.log`'s cache of logged torchmetrics by id(); a deep copy must drop it (callbacks/branch_runner.py).
LIGHTNING_MODULE_ATTRIBUTES = ("_metric_attributes",)
#: A Metric's update count and cached result, beside its public `metric_state` (callbacks/probe.py).
METRIC_ATTRIBUTES = ("_update_count", "_computed")

#: Every attribute path above, by the class that holds it.
ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "Trainer": TRAINER_ATTRIBUTES,
    "DDPStrategy": DDP_STRATEGY_ATTRIBUTES,
    "LightningModule": LIGHTNING_MODULE_ATTRIBUTES,
    "Metric": METRIC_ATTRIBUTES,
}


# ---- probes ------------------------------------------------------------------------------------
def _lookup(owner: str, path: str) -> Any:
    """The object at ``owner.path`` (``owner`` imported), or raises AttributeError/ImportError."""
    value: Any = importlib.import_module(owner)
    for part in path.split("."):
        value = getattr(value, part)
    return value


def missing_torch_names() -> list[str]:
    """The qualified :data:`TORCH_NAMES` this torch lacks (empty when all are there)."""
    missing = []
    for name in TORCH_NAMES:
        try:
            _lookup(name.owner, name.path)
        except (ImportError, AttributeError):
            missing.append(name.qualified)
    return missing


def missing_attribute(holder: Any, path: str) -> str | None:
    """The first part of the dotted ``path`` that ``holder`` lacks, or None when it has all of it."""
    value = holder
    for part in path.split("."):
        if not hasattr(value, part):
            return part
        value = getattr(value, part)
    return None


def check_attributes(owner: str, holder: Any, paths: Iterable[str], *, needed_by: str, remedy: str) -> None:
    """Raises a RuntimeError naming the first of ``paths`` that ``holder`` (an ``owner``) lacks."""
    for path in paths:
        part = missing_attribute(holder, path)
        if part is not None:
            raise RuntimeError(
                f"{needed_by} reads `{owner}.{path}`, which {_versions()} does not have (`{part}` is missing). "
                f"{remedy}"
            )


def _versions() -> str:
    lightning = sys.modules.get("lightning")
    found = f"torch {torch.__version__}"
    if lightning is not None:
        found = f"Lightning {getattr(lightning, '__version__', '?')} with {found}"
    return found


class _Missing:
    """Stands in for a private torch name this torch lacks: any use raises, naming it."""

    def __init__(self, qualified: str) -> None:
        self.qualified = qualified

    def _fail(self) -> RuntimeError:
        return RuntimeError(
            f"emergence_lightning needs the private `{self.qualified}`, which torch {torch.__version__} does "
            "not have; use a torch version this package supports (pyproject.toml)."
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()

    def __getattr__(self, name: str) -> Any:
        raise self._fail()


def _resolve(owner: str, path: str) -> Any:
    """The object at ``owner.path``, looked up once at import (hooks call some per module call)."""
    try:
        return _lookup(owner, path)
    except (ImportError, AttributeError):
        return _Missing(f"{owner}.{path}")


# ---- torch accessors -----------------------------------------------------------------------------
#: ``push_torch_function_mode(mode)`` / ``pop_torch_function_mode()``: the mode stack below ``with mode:``.
push_torch_function_mode = _resolve("torch.overrides", "_push_mode")
pop_torch_function_mode = _resolve("torch.overrides", "_pop_mode")
torch_function_mode_stack = _resolve("torch.overrides", "_get_current_function_mode_stack")
current_torch_function_mode = _resolve("torch.overrides", "_get_current_function_mode")
#: ``with DisableTorchFunction():`` no ``__torch_function__`` override (the tracker's mode included) runs.
DisableTorchFunction = _resolve("torch._C", "DisableTorchFunction")
#: ``torch._C._nn``, where ``torch.nn.functional`` finds some activations (``F.gelu``, ``F.silu``).
torch_nn_namespace = _resolve("torch._C", "_nn")


def optimized_module_class() -> type | tuple[()]:
    """``torch.compile``'s module wrapper class, or ``()`` when dynamo was never imported (nothing compiled)."""
    if "torch._dynamo.eval_frame" not in sys.modules:
        return ()
    found = _resolve("torch._dynamo.eval_frame", "OptimizedModule")
    if isinstance(found, _Missing):
        raise found._fail()
    return found


def compiled_in_place(module: nn.Module) -> bool:
    """Whether ``module.compile()`` compiled ``module`` in place."""
    return getattr(module, "_compiled_call_impl", None) is not None


def is_compiled_function(value: Any) -> bool:
    """Whether ``value`` is a function or method wrapped by ``torch.compile``."""
    return callable(value) and hasattr(value, "_torchdynamo_orig_callable")


def child_modules(module: nn.Module) -> Mapping[str, nn.Module | None]:
    """``module``'s registered children by attribute name (None where one was set to None), in order:
    what ``named_children()`` walks, read directly (every window walks the whole tree).
    """
    return module._modules


def forward_pre_hooks(module: nn.Module) -> list[Callable[..., Any]]:
    """The forward pre-hooks registered on ``module`` (pruning keeps its masks there), in order."""
    return list(module._forward_pre_hooks.values())


def pruned_tensor_name(hook: Any) -> str:
    """The name of the tensor a ``torch.nn.utils.prune`` hook masks (``"weight"``)."""
    return str(hook._tensor_name)


# ---- Lightning accessors -------------------------------------------------------------------------
def batches_that_stepped(trainer: Any) -> int:
    """The step Lightning logs epoch-end ``self.log`` values at (= ``global_step`` with one optimizer)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except AttributeError:
        check_attributes(
            "Trainer",
            trainer,
            ("fit_loop.epoch_loop._batches_that_stepped",),
            needed_by="EmergenceCallback",
            remedy="It logs per-layer values at this step; use a Lightning version this package supports.",
        )
        raise
