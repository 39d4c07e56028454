"""The emergence measure as pure functions: no Lightning, no torch, exact Python integers.

A network is an ordered list of layers ``1..N``; layer ``i`` has ``n_i`` nodes of which ``a_i``
are active. Emergence counts the directed paths of the dense layered graph that start at an
inactive node and end at a later active node.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, get_args

#: The counting rules of :func:`emergence` (a ``Literal`` so that LightningCLI shows the choices).
Variant = Literal["paper", "induced"]
VARIANTS: tuple[str, ...] = get_args(Variant)


def check_variant(variant: object) -> None:
    """Raises a ValueError naming ``variant`` unless it is one of :data:`VARIANTS` (the one check, used everywhere)."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")


def _check_counts(name: str, values: Sequence[int]) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"`{name}` must be a sequence of counts (one per layer), got {values!r}.")
    checked = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                as_int = int(value)
            except (TypeError, ValueError, OverflowError):
                raise TypeError(f"`{name}` must hold integers, got {value!r} at position {index}.") from None
            # bool (and numpy's bool_) compares equal to 0/1 but is no count.
            if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_") or as_int != value:
                raise TypeError(f"`{name}` must hold integers, got {value!r} at position {index}.")
            value = as_int
        if value < 0:
            raise ValueError(f"`{name}` must hold non-negative counts, got {value} at position {index}.")
        checked.append(value)
    return checked


def emergence(
    n: Sequence[int],
    a: Sequence[int],
    m: Sequence[int] | None = None,
    variant: str = "paper",
) -> int:
    r"""Exact emergence of a layered network.

    ``variant="paper"`` is the paper's formula (intermediate layers count all their nodes)::

        E = sum_{i<j} (n_i - a_i) * a_j * prod_{k=i+1}^{j-1} m_k      (m_k = n_k unless given)

    ``variant="induced"`` counts only paths that stay inside the active subgraph after the first
    step::

        E = sum_{i<j} (n_i - a_i) * prod_{k=i+1}^{j} a_k

    Both agree when every intermediate layer is fully active.

    Args:
        n: nodes per layer, in forward order.
        a: active nodes per layer, ``0 <= a_i <= n_i``.
        m: the count each intermediate layer contributes to a path (the paper's filters ``m_k``
            of a CNN); defaults to ``n``. Only for ``variant="paper"`` (an error with ``"induced"``).
        variant: ``"paper"`` or ``"induced"``.

    Returns:
        E as an exact ``int`` (it grows like a product of widths).

    Example:
        >>> emergence([3, 2, 2], [1, 1, 2])
        12
        >>> emergence([3, 2, 2], [1, 1, 2], variant="induced")
        8
    """
    check_variant(variant)
    n = _check_counts("n", n)
    a = _check_counts("a", a)
    if len(n) != len(a):
        raise ValueError(f"`n` and `a` must have the same length, got len(n)={len(n)} and len(a)={len(a)}.")
    for index, (total, active) in enumerate(zip(n, a)):
        if active > total:
            raise ValueError(f"`a` cannot exceed `n`: a[{index}]={active} > n[{index}]={total}.")
    if m is None:
        m = n
    else:
        if variant != "paper":
            raise ValueError(f"`m` is used by variant='paper' only, got m={m!r} with variant={variant!r}.")
        m = _check_counts("m", m)
        if len(m) != len(n):
            raise ValueError(
                f"`m` must have the same length as `n`, got len(m)={len(m)} and len(n)={len(n)}."
            )

    # One backward sweep: reach[j] = number of paths from layer j's nodes (any node) forward to a
    # later active node, so E = sum_i dead_i * reach_from_next_layer. O(N) big-int operations.
    total = 0
    paths_from_next = (
        0  # paths that start at one node of layer i+1 and end at an active node, counting the start
    )
    for i in range(len(n) - 1, -1, -1):
        total += (n[i] - a[i]) * paths_from_next
        if variant == "paper":
            # a path entering layer i may stop here (if the node is active) or pass through any of m_i nodes
            paths_from_next = a[i] + m[i] * paths_from_next
        else:
            # a path entering layer i must land on an active node, then may stop or continue
            paths_from_next = a[i] * (1 + paths_from_next)
    return total


def relative_emergence(E: int, num_parameters: int) -> float:
    """Relative emergence ``E~ = E / P``, with ``P`` the number of trainable parameters.

    Exact integer division rounded once to float; returns ``inf`` when the ratio exceeds the
    float range rather than raising.

    Example:
        >>> relative_emergence(12, 4)
        3.0
    """
    if isinstance(E, bool) or not isinstance(E, int) or E < 0:
        raise ValueError(f"`E` must be a non-negative int, got {E!r}.")
    if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or num_parameters <= 0:
        raise ValueError(f"`num_parameters` must be a positive int, got {num_parameters!r}.")
    try:
        return E / num_parameters
    except OverflowError:
        return math.inf


def log10_emergence(E: int | float) -> float:
    """``log10(E + 1)``: 0 for E = 0, and finite for integers far beyond the float range.

    NaN stays NaN: it is the E of a measurement in which a layer produced NaN or inf.

    Example:
        >>> log10_emergence(99)
        2.0
    """
    if _is_nan(E):
        return math.nan
    if isinstance(E, bool) or not isinstance(E, int) or E < 0:
        raise ValueError(f"`E` must be a non-negative int, got {E!r}.")
    return math.log10(E + 1)


def emergence_as_float(E: int | float) -> float:
    """``E`` as a float for the loggers: ``inf`` where an exact E is beyond the float range; NaN stays NaN.

    Example:
        >>> emergence_as_float(10**400)
        inf
    """
    if _is_nan(E):
        return math.nan
    return float(E) if E < 2**1023 else math.inf


def zero_streak(values: Iterable[float]) -> int:
    """How many of the latest values are exactly 0 (NaN, a diverged measurement, is not 0).

    Example:
        >>> zero_streak([3, 0, 5, 0, 0])
        2
    """
    streak = 0
    for value in values:
        streak = streak + 1 if value == 0 else 0
    return streak


def stops_at_zero(values: Iterable[float], patience: int) -> bool:
    """The stop-at-zero rule: E has been exactly 0 for more than ``patience`` measurements in a row.

    ``values`` are the in-training measurements, oldest first (the one before training never
    counts: an untrained network can have E = 0 for reasons training changes).

    Example:
        >>> stops_at_zero([5, 0, 0], patience=1), stops_at_zero([5, 0, float("nan")], patience=0)
        (True, False)
    """
    return zero_streak(values) > patience


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
