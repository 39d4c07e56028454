"""Checks of the pruning arguments, shared by :func:`prune_model` and ``PruneAndBranchCallback``.

No Lightning import. Each raises early with a message naming the argument and the value received.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from emergence_lightning.pruning.names import PRUNING_FUNCTIONS, STRUCTURED_PRUNING_FUNCTIONS


def check_pruning_arguments(
    pruning_fn: Any = "l1_unstructured",
    use_global_unstructured: Any = None,
    parameter_names: Any = ("weight",),
    modules: Any = None,
    pruning_dim: Any = 0,
    pruning_norm: Any = 1,
) -> None:
    """Raises a ValueError or TypeError for a pruning argument :func:`prune_model` cannot use."""
    if pruning_fn not in PRUNING_FUNCTIONS:
        raise ValueError(f"`pruning_fn` must be one of {PRUNING_FUNCTIONS}, got {pruning_fn!r}.")
    if use_global_unstructured not in (None, True, False):
        raise ValueError(
            f"`use_global_unstructured` must be True, False or None, got {use_global_unstructured!r}."
        )
    if pruning_fn in STRUCTURED_PRUNING_FUNCTIONS and use_global_unstructured:
        raise ValueError(
            f"`use_global_unstructured=True` works with unstructured pruning only, got `pruning_fn`={pruning_fn!r}; "
            "structured pruning is per layer: pass `use_global_unstructured=False` (or None)."
        )
    if (
        isinstance(parameter_names, str)
        or not isinstance(parameter_names, Sequence)
        or not parameter_names
        or not all(isinstance(name, str) and name for name in parameter_names)
    ):
        raise ValueError(f"`parameter_names` must be a non-empty sequence of names, got {parameter_names!r}.")
    if modules is not None and (
        isinstance(modules, str)
        or not isinstance(modules, Sequence)
        or not modules
        or not all(isinstance(name, str) for name in modules)
    ):
        raise ValueError(f"`modules` must be None or a non-empty sequence of module names, got {modules!r}.")
    if isinstance(pruning_dim, bool) or not isinstance(pruning_dim, int):
        raise TypeError(f"`pruning_dim` must be an int, got {pruning_dim!r}.")
    if not _valid_norm(pruning_norm):
        raise ValueError(
            f"`pruning_norm` must be a number (1, 2, float('inf'), ...) or 'fro'/'nuc', as torch.norm's `p`, "
            f"got {pruning_norm!r}."
        )


def check_amount(amount: Any) -> float:
    """One pruning fraction in ``[0, 1)``, as a float."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"`amount` must be a fraction in [0, 1), got {amount!r}.")
    return float(amount)


def _valid_norm(norm: Any) -> bool:
    """Whether ``norm`` is a ``p`` that ``torch.norm`` takes (what ``prune.ln_structured`` passes on)."""
    if isinstance(norm, str):
        return norm in ("fro", "nuc")
    return not isinstance(norm, bool) and isinstance(norm, (int, float)) and not math.isnan(norm)
