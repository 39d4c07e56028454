"""Checks of the pruning arguments, shared by :func:`prune_model` and ``PruneAndBranchCallback``.

No Lightning import. Each raises early with a message naming the argument and the value received.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import nn

from emergence_lightning.pruning.names import PRUNING_FUNCTIONS, STRUCTURED_PRUNING_FUNCTIONS

#: The seeds ``seed_everything`` and NumPy take (an unsigned 32-bit int); others are refused, not replaced.
SEED_RANGE = (0, 2**32 - 1)


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
    if isinstance(pruning_dim, bool) or not isinstance(pruning_dim, numbers.Integral):
        raise TypeError(f"`pruning_dim` must be an int, got {pruning_dim!r}.")
    if not _valid_norm(pruning_norm):
        raise ValueError(
            f"`pruning_norm` must be a number (1, 2, float('inf'), ...) or 'fro'/'nuc', as torch.norm's `p`, "
            f"got {pruning_norm!r}."
        )


def check_amount(amount: Any, name: str = "amount") -> float:
    """One pruning fraction in ``[0, 1)`` (NumPy scalars too), as a float; ``name`` is the argument's in the message."""
    if not is_number(amount) or not 0 <= amount < 1:
        raise ValueError(f"`{name}` must be a fraction in [0, 1), got {amount!r}.")
    return float(amount)


def is_number(value: Any) -> bool:
    """A real number that is no bool: Python's and NumPy's ints and floats alike."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_seed(seed: Any) -> int:
    """A seed as a Python int, in :data:`SEED_RANGE` (NumPy ints accepted).

    Example:
        >>> check_seed(7)
        7
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")
    value = int(seed)  # exact for any Integral; typeshed's Integral has no comparison with int
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ValueError(
            f"`seed` must be in [{SEED_RANGE[0]}, 2**32 - 1] (what NumPy and torch seed with), got {seed!r}."
        )
    return value


def check_pruning_dim(
    targets: Sequence[tuple[str, nn.Module, str]], pruning_fn: str, pruning_dim: int
) -> None:
    """Structured pruning's ``pruning_dim`` must index every tensor it prunes (``targets`` as ``find_prunable`` gives them).

    Raises:
        ValueError: a tensor with too few dimensions, named with its shape.
    """
    if pruning_fn not in STRUCTURED_PRUNING_FUNCTIONS:
        return
    for module_name, module, tensor_name in targets:
        shape = tuple(getattr(module, tensor_name).shape)
        if not -len(shape) <= pruning_dim < len(shape):
            raise ValueError(
                f"`pruning_dim`={pruning_dim} does not index `{module_name}.{tensor_name}` of shape {shape}: "
                f"{pruning_fn} removes slices along a dimension in [{-len(shape)}, {len(shape)})."
            )


def _valid_norm(norm: Any) -> bool:
    """Whether ``norm`` is a ``p`` that ``torch.norm`` takes (what ``prune.ln_structured`` passes on)."""
    if isinstance(norm, str):
        return norm in ("fro", "nuc")
    return is_number(norm) and not math.isnan(norm)
