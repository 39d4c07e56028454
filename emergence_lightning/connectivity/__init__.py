"""Path-exact emergence: count paths on a network's real connectivity instead of dense layers.

The paper's formula (:func:`emergence_lightning.functional.emergence`) assumes every node of a
layer feeds every node of the next, and nothing skips a layer. Pruned weights remove edges and
residual connections add paths that skip layers, so the dense formula miscounts both. This package

- counts the paths exactly on any layered DAG (:func:`path_emergence`, in ``paths.py``), and
- derives that DAG from a model's weights by tracing it with ``torch.fx`` (:func:`build_edges`,
  in ``graph.py``; each operation's node map in ``node_maps.py``).

Plain PyTorch, no Lightning. See ``docs/connectivity.md`` for the definition and a worked example.
"""

from emergence_lightning.connectivity.graph import ConnectivityError, build_edges
from emergence_lightning.connectivity.paths import path_emergence

__all__ = ["ConnectivityError", "build_edges", "path_emergence"]
