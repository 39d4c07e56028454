"""Counting paths exactly on a layered DAG (no model, no tracing): the arithmetic of path-exact E.

Counts are kept modulo several primes on the device and put back together with the Chinese
remainder theorem, so they stay exact however large they grow. Plain PyTorch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from emergence_lightning.functional import check_variant


def path_emergence(
    edges: Mapping[tuple[int, int], Tensor],
    active: Sequence[Tensor],
    variant: str = "paper",
) -> int:
    r"""Exact number of directed paths from an inactive node to a later active node.

    The network is a DAG whose nodes are grouped in layers ``0..N-1`` (topological order).
    ``variant="paper"`` counts every path ``v_0 -> v_1 -> ... -> v_k`` (``k >= 1``) with ``v_0``
    inactive and ``v_k`` active, whatever the nodes in between. ``variant="induced"`` also
    requires every node after the start to be active. With dense edges between consecutive layers
    only, both equal :func:`~emergence_lightning.functional.emergence` of the layer sizes.

    Dynamic programming from the last layer backwards, one matrix product per edge block::

        G_i = active_i + sum_{j>i} A_ij @ G_j           (paper: paths from a node to an active node)
        H_i = active_i * (1 + sum_{j>i} A_ij @ H_j)     (induced: the same inside the active subgraph)
        E   = sum_i sum_{p dead in i} (sum_{j>i} A_ij @ G_j)[p]

    The counts grow like a product of widths, far past int64. They are computed modulo a few
    primes below ``2**53 / width`` with float64 matrix products (exact: every partial sum is an
    integer below ``2**53``), all primes at once as the columns of one product, and the integer is
    rebuilt by the Chinese remainder theorem. The primes are chosen from an exact upper bound on
    ``E``, so the result is exact, never an overflowed or rounded value.

    Args:
        edges: ``(i, j) -> A_ij`` with ``0 <= i < j < N``: a 2-D tensor (dense or sparse) of
            shape ``(n_i, n_j)`` whose nonzero entries are edges from node ``p`` of layer ``i`` to
            node ``q`` of layer ``j``. Missing pairs have no edges; the values don't matter.
        active: one 1-D boolean tensor per layer, ``True`` for an active node.
        variant: ``"paper"`` or ``"induced"``.

    Returns:
        The exact count as a Python ``int``.

    Raises:
        TypeError: ``active`` entries that are not boolean tensors, edges that are not tensors.
        ValueError: an unknown variant, a key with ``i >= j`` or out of range, a wrong shape.

    Example:
        >>> import torch
        >>> active = [torch.tensor([False, True, False]), torch.tensor([True, False]),
        ...           torch.tensor([True, True])]
        >>> dense = {(0, 1): torch.ones(3, 2), (1, 2): torch.ones(2, 2)}
        >>> path_emergence(dense, active)  # == emergence([3, 2, 2], [1, 1, 2])
        12
        >>> path_emergence(dense, active, variant="induced")
        8
        >>> skip = dict(dense)
        >>> skip[(0, 2)] = torch.tensor([[1, 0], [0, 1], [1, 1]])  # edges that skip layer 1
        >>> path_emergence(skip, active)  # + 3 paths from the dead nodes 0 and 2 of layer 0
        15
    """
    check_variant(variant)
    masks = _check_active(active)
    blocks = _check_edges(edges, [int(mask.numel()) for mask in masks])
    return _count_paths(blocks, masks, variant)


def _check_active(active: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(active, Tensor) or not isinstance(active, Sequence):
        raise TypeError(
            f"`active` must be a sequence of 1-D boolean tensors (one per layer), got {type(active).__name__}."
        )
    masks = []
    for index, mask in enumerate(active):
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            what = f"a tensor of dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"`active[{index}]` must be a boolean tensor, got {what}.")
        if mask.dim() != 1:
            raise ValueError(
                f"`active[{index}]` must be 1-D (one entry per node), got shape {tuple(mask.shape)}."
            )
        masks.append(mask.detach().cpu())
    return masks


def _check_edges(edges: Mapping[tuple[int, int], Tensor], sizes: list[int]) -> list[list[tuple[int, Tensor]]]:
    """Validated edge blocks grouped by source layer: ``blocks[i] = [(j, A_ij), ...]``."""
    if not isinstance(edges, Mapping):
        raise TypeError(f"`edges` must be a mapping (i, j) -> tensor, got {type(edges).__name__}.")
    blocks: list[list[tuple[int, Tensor]]] = [[] for _ in sizes]
    for key, matrix in edges.items():
        if (
            not isinstance(key, tuple)
            or len(key) != 2
            or any(isinstance(k, bool) or not isinstance(k, int) for k in key)
        ):
            raise TypeError(f"`edges` keys must be pairs of layer indices (i, j), got {key!r}.")
        i, j = key
        if not 0 <= i < j < len(sizes):
            raise ValueError(
                f"`edges` keys must satisfy 0 <= i < j < {len(sizes)} (the number of layers in `active`), "
                f"got {key!r}."
            )
        if not isinstance(matrix, Tensor):
            raise TypeError(f"`edges[{key!r}]` must be a tensor, got {type(matrix).__name__}.")
        expected = (sizes[i], sizes[j])
        if tuple(matrix.shape) != expected:
            raise ValueError(
                f"`edges[{key!r}]` must have shape (n_{i}, n_{j}) = {expected}, got {tuple(matrix.shape)}."
            )
        blocks[i].append((j, matrix.detach().cpu()))
    return blocks


def _as_pattern(matrix: Tensor) -> Tensor:
    """The 0/1 float64 edge pattern: a dense tensor, or a sparse COO one for sparse input."""
    if matrix.layout == torch.strided:
        return matrix.to(torch.float64) if matrix.dtype == torch.bool else (matrix != 0).to(torch.float64)
    coo = matrix.to_sparse_coo().coalesce() if matrix.layout != torch.sparse_coo else matrix.coalesce()
    keep = coo.values() != 0
    indices = coo.indices()[:, keep]
    ones = torch.ones(indices.shape[1], dtype=torch.float64)
    return torch.sparse_coo_tensor(indices, ones, tuple(coo.shape), check_invariants=False).coalesce()


def _upper_bound(blocks: list[list[tuple[int, Tensor]]], masks: list[Tensor]) -> int:
    """Exact integer bound on E and on every intermediate count, from the layer sizes alone.

    ``B_i = 1 + sum_j n_j * B_j`` bounds every entry of ``G_i``; E is at most ``dead_i * (B_i - 1)``
    summed over the layers. It ignores which edges are missing (reading them would cost a pass
    over every block), so a pruned network may get a residue or two more than it needs.
    """
    reach = [0] * len(masks)
    bound = 0
    for i in range(len(masks) - 1, -1, -1):
        onward = sum(int(masks[j].numel()) * reach[j] for j, _ in blocks[i])
        reach[i] = 1 + onward
        bound += int((~masks[i]).sum()) * onward
    return bound


_PRIMES: dict[int, list[int]] = {}


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin, exact for n < 3.3e24 (our n < 2**53)."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2:
        return False
    for p in bases:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _moduli(bound: int, bits: int) -> list[int]:
    """The largest primes below ``2**bits`` whose product exceeds ``bound``."""
    primes = _PRIMES.setdefault(bits, [])
    chosen: list[int] = []
    product = 1
    candidate = primes[-1] - 1 if primes else (1 << bits) - 1
    while product <= bound:
        if len(chosen) == len(primes):
            while not _is_prime(candidate):
                candidate -= 1
            primes.append(candidate)
            candidate -= 1
        chosen.append(primes[len(chosen)])
        product *= chosen[-1]
    return chosen


def _crt(residues: list[int], moduli: list[int]) -> int:
    """The unique ``0 <= x < prod(moduli)`` with ``x % m == r`` for every pair (Garner's method)."""
    x, product = 0, 1
    for r, m in zip(residues, moduli):
        x += product * ((r - x) * pow(product, -1, m) % m)
        product *= m
    return x


_CHUNK_ELEMENTS = 1 << 22  # float64 entries converted at once: 32 MiB, whatever the layer width


def _matmul_mod(matrix: Tensor, counts: Tensor, moduli: Tensor) -> Tensor:
    """``(A != 0) @ counts mod moduli``, exact: counts < p and a row has < 2**53 / p edges."""
    if matrix.layout != torch.strided:
        pattern = _as_pattern(matrix)
        return torch.fmod(torch.sparse.mm(pattern, counts), moduli)
    rows = max(1, _CHUNK_ELEMENTS // max(1, matrix.shape[1]))
    parts = [
        torch.fmod(_as_pattern(matrix[start : start + rows]) @ counts, moduli)
        for start in range(0, matrix.shape[0], rows)
    ]
    return torch.cat(parts) if parts else counts.new_zeros((0, counts.shape[1]))


def _count_paths(
    blocks: list[list[tuple[int, Tensor]]],
    masks: list[Tensor],
    variant: str,
    prime_bits: int | None = None,
) -> int:
    """The DP of :func:`path_emergence` on validated inputs, modulo primes of ``prime_bits`` bits."""
    bound = _upper_bound(blocks, masks)
    if bound == 0:
        return 0
    # A float64 sum of `width` residues below 2**bits stays below 2**53, hence exact.
    widest = max(int(mask.numel()) for mask in masks)
    safe_bits = 52 - widest.bit_length()
    bits = safe_bits if prime_bits is None else min(prime_bits, safe_bits)
    if bits < 8:
        raise ValueError(f"a layer of {widest} nodes is too wide for exact float64 counting.")
    primes = _moduli(bound, bits)
    moduli = torch.tensor(primes, dtype=torch.float64)

    # G_i (paper) or H_i (induced) mod each prime, filled from the last layer down (blocks point forward).
    counts: list[Tensor] = [torch.empty(0)] * len(masks)
    total = torch.zeros(len(primes), dtype=torch.float64)
    for i in range(len(masks) - 1, -1, -1):
        onward = torch.zeros(int(masks[i].numel()), len(primes), dtype=torch.float64)
        for j, matrix in blocks[i]:
            onward = torch.fmod(onward + _matmul_mod(matrix, counts[j], moduli), moduli)
        total = torch.fmod(total + onward[~masks[i]].sum(0), moduli)
        alive = masks[i].to(torch.float64).unsqueeze(1)
        counts[i] = torch.fmod(onward + alive if variant == "paper" else alive * (onward + 1), moduli)
    return _crt([int(r) for r in total.tolist()], primes)
