"""The brute-force path counter: every path enumerated node by node (exponential: tiny graphs only).

An independent reference for the closed form (:mod:`emergence_lightning.functional`) and the
path-exact count on real weights (:mod:`emergence_lightning.connectivity`); it imports nothing
from the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def count_paths(
    edges: Mapping[tuple[int, int], torch.Tensor], active: Sequence[torch.Tensor], variant: str = "paper"
) -> int:
    """Paths that start at an inactive node and end at a later active node, enumerated one by one.

    Args:
        edges: ``(i, j) -> matrix`` of shape ``(nodes of layer i, nodes of layer j)``; a non-zero
            entry ``[p, q]`` is an edge from node ``p`` of layer ``i`` to node ``q`` of layer ``j``.
        active: a boolean mask of the active nodes of each layer.
        variant: ``"paper"`` (paths pass through any nodes) or ``"induced"`` (after the first step
            they stay on active nodes).

    >>> count_paths(dense_edges([3, 2, 2]), first_active([3, 2, 2], [1, 1, 2]))  # DESIGN: 12 / 8
    12
    >>> count_paths(dense_edges([3, 2, 2]), first_active([3, 2, 2], [1, 1, 2]), "induced")
    8
    """
    successors: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (i, j), matrix in edges.items():
        for p, q in (matrix != 0).nonzero().tolist():
            successors.setdefault((i, p), []).append((j, q))
    alive = {(layer, node) for layer, mask in enumerate(active) for node in mask.nonzero().flatten().tolist()}
    count = 0
    for layer, mask in enumerate(active):
        for node in range(mask.numel()):
            if (layer, node) in alive:
                continue
            stack = [[(layer, node)]]
            while stack:
                path = stack.pop()
                if len(path) > 1 and path[-1] in alive:
                    count += 1
                for following in successors.get(path[-1], []):
                    if variant == "induced" and following not in alive:
                        continue
                    stack.append([*path, following])
    return count


def dense_edges(n: Sequence[int]) -> dict[tuple[int, int], torch.Tensor]:
    """The dense layered graph of DESIGN section 1: every node of layer i feeds every node of layer i + 1."""
    return {(i, i + 1): torch.ones(n[i], n[i + 1]) for i in range(len(n) - 1)}


def first_active(n: Sequence[int], a: Sequence[int]) -> list[torch.Tensor]:
    """Masks with the first ``a_i`` of the ``n_i`` nodes of each layer active."""
    return [torch.arange(width) < alive for width, alive in zip(n, a)]
