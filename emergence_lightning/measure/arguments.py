"""Argument checks shared by the tracker and the callback: errors that name the argument and value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping, Sequence

from torch import nn

from emergence_lightning.measure import layers as rules
from emergence_lightning.measure.statistics import STATISTICS

NodeDim = int | Mapping[str, int] | None


def check_tracking_arguments(
    threshold: float,
    statistic: str,
    min_firing_rate: float,
    node_dim: NodeDim,
    layers: Sequence[str] | None,
) -> None:
    """Raises a clear error for a bad tracking argument (shared by the tracker and the callback)."""
    if not is_real(threshold):
        raise TypeError(f"`threshold` must be a number, got {threshold!r}.")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"`threshold` must be a finite number >= 0, got {threshold!r}.")
    if statistic not in STATISTICS:
        raise ValueError(f"`statistic` must be one of {STATISTICS}, got {statistic!r}.")
    if not is_real(min_firing_rate):
        raise TypeError(f"`min_firing_rate` must be a number, got {min_firing_rate!r}.")
    if not 0 <= min_firing_rate < 1:
        raise ValueError(f"`min_firing_rate` must be in [0, 1), got {min_firing_rate!r}.")
    dims = list(node_dim.values()) if isinstance(node_dim, Mapping) else [node_dim]
    if isinstance(node_dim, Mapping) and not all(isinstance(key, str) for key in node_dim):
        raise TypeError(f"`node_dim` keys must be layer names (str), got {node_dim!r}.")
    for dim in dims:
        if dim is not None and not is_integer(dim):
            raise TypeError(
                f"`node_dim` must be an int, a mapping from layer names to ints, or None, got {node_dim!r}."
            )
        if dim == 0:
            raise ValueError(f"`node_dim` cannot be 0, the batch dimension, got {node_dim!r}.")
    if layers is not None:
        if (
            isinstance(layers, str)
            or not isinstance(layers, Collection)
            or not all(isinstance(name, str) for name in layers)
        ):
            raise TypeError(f"`layers` must be a sequence of module names (str), got {layers!r}.")
        if len(layers) == 0:
            raise ValueError("`layers` must name at least one module, got an empty sequence.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"`layers` names a module twice: {list(layers)!r}.")


def is_real(value: object) -> bool:
    """A real number, numpy's scalars included (``np.float32(0.05)``), but not a bool."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def is_integer(value: object) -> bool:
    """An integer, numpy's included (``np.int64(2)``), but not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")


def check_flags(**flags: object) -> None:
    """Raises a TypeError for a switch that is not True or False (``"no"`` would read as True)."""
    for name, value in flags.items():
        if value not in (True, False):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def check_layer_names(model: nn.Module, layers: Sequence[str] | None, argument: str = "layers") -> set[str]:
    """The names in ``layers``, each a module or a call site of one; raises naming ``argument`` on any other.

    Names are read without wrappers (:func:`~emergence_lightning.measure.layers.qualified_modules`);
    names in the spelling of version 0.1 (``a.relu#2``, ``a.relu()``) are read as today's, with a warning.
    """
    if layers is None:
        return set()
    modules = dict.fromkeys(name for name, _ in rules.qualified_modules(model))  # ordered, for the message
    wanted = [rules.migrated_name(name) for name in layers]

    def known(name: str) -> bool:
        if name in modules and name != "":
            return True
        site = rules.base_name(name)
        if site in (rules.INPUT_LAYER, rules.OUTPUT_LAYER):
            return True
        owner = rules.functional_owner(site)
        return owner in modules if owner is not None else site in modules and site != ""

    unknown = [name for name in wanted if not known(name)]
    if unknown:
        valid = [name for name in modules if name][:12]
        raise ValueError(
            f"`{argument}` names modules that don't exist: {unknown}. Some valid names: {valid}."
        )
    return set(wanted)


def migrated_node_dims(node_dim: NodeDim) -> NodeDim:
    """``node_dim`` with its layer names (a mapping's keys) in today's spelling."""
    if not isinstance(node_dim, Mapping):
        return node_dim
    return {rules.migrated_name(name): dim for name, dim in node_dim.items()}
