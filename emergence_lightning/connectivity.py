"""Path-exact emergence: count paths on a network's real connectivity instead of dense layers.

The paper's formula (:func:`emergence_lightning.functional.emergence`) assumes every node of a
layer feeds every node of the next, and nothing skips a layer. Pruned weights remove edges and
residual connections add paths that skip layers, so the dense formula miscounts both. This module

- counts the paths exactly on any layered DAG (:func:`path_emergence`), and
- derives that DAG from a model's weights by tracing it with ``torch.fx`` (:func:`build_edges`).

Plain PyTorch, no Lightning. See ``docs/connectivity.md`` for the definition and a worked example.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from emergence_lightning.measure.layers import INPUT_LAYER, OUTPUT_LAYER, parametrised_leaves

VARIANTS = ("paper", "induced")


_DENSE_WAY_OUT = (
    "Way out: name the tracked layers explicitly with modules that `torch.fx` can see, replace the "
    "operation by a supported module, or use the dense formula (`emergence(n, a)`, the callback's "
    "`connectivity='dense'`), which needs no graph."
)


class ConnectivityError(RuntimeError):
    """The model's graph could not be turned into edges between the tracked layers."""


# --------------------------------------------------------------------------------------------
# Counting paths
# --------------------------------------------------------------------------------------------


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
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
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
    chosen, product = [], 1
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

    counts: list[Tensor | None] = [None] * len(masks)  # G_i (paper) or H_i (induced) mod each prime
    total = torch.zeros(len(primes), dtype=torch.float64)
    for i in range(len(masks) - 1, -1, -1):
        onward = torch.zeros(int(masks[i].numel()), len(primes), dtype=torch.float64)
        for j, matrix in blocks[i]:
            onward = torch.fmod(onward + _matmul_mod(matrix, counts[j], moduli), moduli)
        total = torch.fmod(total + onward[~masks[i]].sum(0), moduli)
        alive = masks[i].to(torch.float64).unsqueeze(1)
        counts[i] = torch.fmod(onward + alive if variant == "paper" else alive * (onward + 1), moduli)
    return _crt([int(r) for r in total.tolist()], primes)


# --------------------------------------------------------------------------------------------
# Edges from a model
# --------------------------------------------------------------------------------------------

# How a value's nodes map to the nodes of an operation's output: the identity, or a boolean
# (units_in, units_out) matrix.
_IDENTITY = "identity"
_Map = str | Tensor


_WEIGHT_HOOKS = (prune.BasePruningMethod, WeightNorm, SpectralNorm)


class _Unsupported(Exception):
    """An operation whose connectivity we don't know."""


_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.PReLU,
    nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip

# Spatial operations: every output channel depends on the same input channel only.
_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
    nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)  # fmt: skip

_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.relu, torch.relu_, torch.sigmoid,
    torch.tanh, torch.exp, torch.abs, torch.clamp, torch.clip, torch.where, torch.maximum,
    torch.minimum, torch.square, torch.sqrt, torch.pow, torch.dropout,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.softplus, F.hardtanh, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.logsigmoid,
    F.softsign, F.tanhshrink, F.prelu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "clamp", "clamp_",
    "clip", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "pow", "sqrt",
    "square", "contiguous", "clone", "detach", "float", "double", "half", "to", "type", "type_as",
}  # fmt: skip
_CHANNEL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate, F.pad,
    torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d,
}  # fmt: skip
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_RESHAPE_METHODS = {
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
    "unflatten",
}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}


def build_edges(
    model: nn.Module,
    layer_names: Sequence[str],
    example_input: Tensor,
) -> dict[tuple[int, int], Tensor]:
    """Edges between the tracked layers of ``model``, read from its weights via ``torch.fx``.

    A layer is the output of a module named in ``layer_names`` (qualified names from
    ``model.named_modules()``, e.g. its ReLUs); its nodes are the features of a ``(batch,
    features)`` output or the channels (dim 1) of a ``(batch, channels, ...)`` output.
    ``"<input>"`` and ``"<output>"`` name the input of the first and the output of the last
    module with parameters (definition order), as in the activity tracker.

    Node ``p`` of layer ``i`` has an edge to node ``q`` of layer ``j > i`` when some route from one
    to the other passes through untracked operations only. Routes compose along the traced graph:

    - ``nn.Linear``: an edge where the effective weight (``module.weight``, so pruning masks
      apply) is nonzero; ``nn.Conv*d``: where any kernel weight between the two channels is.
    - residual additions, products, elementwise activations, dropout, pooling, padding: node to
      the same node (a broadcast node of size 1 to every node); batch norm: the same, unless its
      scale is zero; layer and group norm: every node to every node of its group.
    - concatenation along the nodes: to the node's position in the result; flatten, view and
      reshape: channel ``c`` to the features it becomes (``c*H*W .. (c+1)*H*W - 1``), using the
      shapes of a forward pass on ``example_input``.

    The forward pass runs in eval mode without gradients; train/eval modes are restored. Module
    hooks don't run (an attached activity tracker sees nothing), except those that compute the
    effective weight: ``torch.nn.utils.prune`` masks and old-style weight/spectral norm.

    Args:
        model: the network. It must be traceable by ``torch.fx.symbolic_trace``.
        layer_names: the tracked modules in forward order (edges must go from an earlier name to a
            later one).
        example_input: one batch the model accepts, on the model's device (2 samples are enough).

    Returns:
        ``{(i, j): A_ij}`` with boolean CPU tensors of shape ``(n_i, n_j)``, indices into
        ``layer_names``; pairs without any edge are left out. Feed it to :func:`path_emergence`.

    Raises:
        TypeError, ValueError: bad arguments (named in the message).
        ConnectivityError: the model can't be traced, runs a tracked module twice, or routes a
            tracked layer through an operation whose connectivity is unknown (named, with the way
            out: explicit layer names or the dense formula).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(layer_names, str) or not isinstance(layer_names, Sequence):
        raise TypeError(f"`layer_names` must be a sequence of module names, got {layer_names!r}.")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"`example_input` must be a tensor (one batch), got {type(example_input).__name__}.")
    names = list(layer_names)
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise TypeError(f"`layer_names` must hold strings, got {bad[0]!r}.")
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"`layer_names` names a layer twice: {duplicated}.")
    modules = dict(model.named_modules())
    pseudo_names = (INPUT_LAYER, OUTPUT_LAYER)
    unknown = [name for name in names if name not in pseudo_names and (name == "" or name not in modules)]
    if unknown:
        valid = [name for name in modules if name][:10]
        raise ValueError(
            f"`layer_names` names modules that don't exist in {type(model).__name__}: {unknown}. "
            f"Some valid names: {valid}."
        )
    if not names:
        return {}

    # The pseudo layers resolve as in measure/layers.py: the first and last parametrised leaf modules.
    leaves = [name for name, _ in parametrised_leaves(model)]
    pseudo = {INPUT_LAYER: leaves[0] if leaves else None, OUTPUT_LAYER: leaves[-1] if leaves else None}
    for name in (INPUT_LAYER, OUTPUT_LAYER):
        if name in names and pseudo[name] is None:
            raise ValueError(
                f"`layer_names` has {name!r}, which needs a module with parameters; "
                f"{type(model).__name__} has none."
            )
    leaf_names = {pseudo.get(name, name) for name in names}

    graph = _trace(model, leaf_names)
    tracked = _tracked_nodes(graph, names, pseudo)
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            propagator = _Propagator(fx.GraphModule(model, graph), model, tracked, names)
            propagator.run(example_input)
    finally:
        for module, training in modes.items():
            module.training = training
    return propagator.edges


class _Tracer(fx.Tracer):
    """The default tracer, plus the tracked modules kept whole so their outputs are graph nodes."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, leaves: set[str]) -> fx.Graph:
    try:
        return _Tracer(leaves).trace(model)
    except Exception as error:
        raise ConnectivityError(
            f"{type(model).__name__} could not be traced by torch.fx, so its connectivity is unknown: "
            f"{type(error).__name__}: {error} {_DENSE_WAY_OUT}"
        ) from error


def _tracked_nodes(graph: fx.Graph, names: list[str], pseudo: dict[str, str | None]) -> dict[fx.Node, int]:
    """The graph node whose value is each tracked layer -> the layer's index in ``names``."""
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    tracked: dict[fx.Node, int] = {}
    for index, name in enumerate(names):
        module_name = pseudo.get(name, name)
        found = calls.get(module_name, [])
        if not found:
            raise ValueError(
                f"`layer_names` entry {name!r} (module {module_name!r}) is never called in the traced forward pass."
            )
        if len(found) > 1:
            raise ConnectivityError(
                f"Module {module_name!r} is called {len(found)} times in one forward pass, so its calls would "
                "merge into one layer. Give each call its own module (e.g. `relu1`, `relu2`), or track other "
                "modules."
            )
        node = found[0]
        if name == INPUT_LAYER:
            inputs = [arg for arg in node.args if isinstance(arg, fx.Node)]
            if len(inputs) != 1:
                raise ConnectivityError(
                    f"{INPUT_LAYER!r}: module {module_name!r} must take exactly one tensor input."
                )
            node = inputs[0]
        if node in tracked:
            raise ValueError(
                f"`layer_names` entries {names[tracked[node]]!r} and {name!r} are the same value in the graph."
            )
        tracked[node] = index
    return tracked


class _Flow:
    """Which nodes of which tracked layers reach a value without crossing another tracked layer.

    ``sources[k]`` is the identity (the value *is* layer ``k``) or a boolean ``(n_k, units)``
    matrix. ``blocked`` explains why the value's connectivity is unknown, if it is.
    """

    def __init__(self, sources: dict[int, _Map] | None = None, blocked: str | None = None) -> None:
        self.sources = sources or {}
        self.blocked = blocked

    def __bool__(self) -> bool:
        return bool(self.sources) or self.blocked is not None


def _compose(source: _Map, mapping: _Map) -> _Map:
    if isinstance(mapping, str):
        return source
    if isinstance(source, str):
        return mapping
    nodes, units = source.shape
    if nodes and units % nodes == 0 and units > nodes:
        # A flattened channel: node k owns units k*b .. (k+1)*b - 1 exactly. OR the mapping's rows
        # per block instead of a product: VGG's 512 channels -> 25088 features -> 4096 costs one
        # pass over the 25088 x 4096 weight pattern, not a 512 x 25088 x 4096 product.
        block = units // nodes
        owners = torch.eye(nodes, dtype=torch.bool, device=source.device).repeat_interleave(block, dim=1)
        if torch.equal(source, owners):
            return mapping.reshape(nodes, block, mapping.shape[1]).any(1)
    # Boolean matrix product: a positive count of routes is an edge (float32 is exact enough for > 0).
    return (source.float() @ mapping.float()) > 0


def _union(first: _Map, second: _Map, units: int, device: torch.device) -> _Map:
    if isinstance(first, str) and isinstance(second, str):
        return _IDENTITY
    eye = torch.eye(units, dtype=torch.bool, device=device)
    return (eye if isinstance(first, str) else first) | (eye if isinstance(second, str) else second)


def _units(shape: Sequence[int]) -> int:
    return int(shape[1])


class _Propagator(fx.Interpreter):
    """Runs the traced model once and composes each value's :class:`_Flow` from its inputs'."""

    def __init__(
        self, module: fx.GraphModule, model: nn.Module, tracked: dict[fx.Node, int], names: list[str]
    ) -> None:
        super().__init__(module)
        self.model = model
        self.tracked = tracked
        self.names = names
        self.flows: dict[fx.Node, _Flow] = {}
        self.shapes: dict[fx.Node, torch.Size] = {}
        self.edges: dict[tuple[int, int], Tensor] = {}

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        # Other hooks stay silent, so measuring connectivity never feeds an activity tracker or
        # trips its shared-module check; only reparametrisations that compute the effective
        # weight (pruning masks, old-style weight/spectral norm) run first.
        module = self.fetch_attr(target)
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _WEIGHT_HOOKS):
                hook(module, args)
        return module.forward(*args, **kwargs)

    def run_node(self, node: fx.Node) -> Any:
        try:
            result = super().run_node(node)
        except Exception as error:
            raise ConnectivityError(
                f"Running `example_input` through the traced model failed at {_describe(node, self.model)}: "
                f"{type(error).__name__}: {error}"
            ) from error
        if isinstance(result, Tensor):
            self.shapes[node] = result.shape
        flow = self._flow(node, result)
        if node in self.tracked:
            flow = self._track(node, flow, result)
        self.flows[node] = flow
        return result

    def _flow(self, node: fx.Node, result: Any) -> _Flow:
        inputs = [arg for arg in node.all_input_nodes if self.flows.get(arg)]
        if not inputs or node.op == "output":
            return _Flow()
        blocked = next((self.flows[arg].blocked for arg in inputs if self.flows[arg].blocked), None)
        if blocked:
            return _Flow(blocked=blocked)
        if not isinstance(result, Tensor):
            # Sizes and other plain values carry no data; tuples of tensors (split, chunk) we can't follow.
            if any(isinstance(item, Tensor) for item in _flatten(result)):
                return _Flow(blocked=f"{_describe(node, self.model)} returns several tensors")
            return _Flow()
        try:
            if result.dim() < 2:
                raise _Unsupported(f"its output has shape {tuple(result.shape)}, without a node dimension")
            maps = self._maps(node, result, inputs)
        except _Unsupported as reason:
            return _Flow(blocked=f"{_describe(node, self.model)} ({reason})")
        sources: dict[int, _Map] = {}
        units = _units(result.shape)
        for arg, mapping in maps:
            for layer, source in self.flows[arg].sources.items():
                routed = _compose(source, mapping)
                sources[layer] = (
                    routed if layer not in sources else _union(sources[layer], routed, units, result.device)
                )
        return _Flow(sources)

    def _track(self, node: fx.Node, flow: _Flow, result: Any) -> _Flow:
        index = self.tracked[node]
        name = self.names[index]
        if flow.blocked:
            raise ConnectivityError(
                f"The connectivity into layer {name!r} is unknown: it is reached through {flow.blocked}, "
                f"which is not supported. {_DENSE_WAY_OUT}"
            )
        if not isinstance(result, Tensor) or result.dim() < 2:
            shape = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise ConnectivityError(f"Layer {name!r} must output a (batch, nodes, ...) tensor, got {shape}.")
        units = _units(result.shape)
        for source, mapping in flow.sources.items():
            if source >= index:
                raise ValueError(
                    f"`layer_names` must follow the forward order, but {self.names[source]!r} feeds {name!r}, "
                    "which is listed before it."
                )
            matrix = (
                torch.eye(units, dtype=torch.bool) if isinstance(mapping, str) else mapping.detach().cpu()
            )
            if matrix.any():
                self.edges[(source, index)] = matrix
        return _Flow({index: _IDENTITY})

    # ---- per-operation connectivity -------------------------------------------------------
    def _maps(self, node: fx.Node, result: Tensor, inputs: list[fx.Node]) -> list[tuple[fx.Node, _Map]]:
        """``(input value, map from its nodes to the result's)`` for every input that carries a flow."""
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            (arg,) = self._single(inputs)
            return [(arg, self._module_map(module, self.shapes[arg], result))]
        target = node.target
        if node.op == "call_function" and target in _CAT_FUNCTIONS:
            return self._cat_maps(node, result)
        if (node.op == "call_function" and target in _ELEMENTWISE_FUNCTIONS) or (
            node.op == "call_method" and target in _ELEMENTWISE_METHODS
        ):
            return [(arg, _broadcast(self.shapes[arg], result.shape, result.device)) for arg in inputs]
        (arg,) = self._single(inputs)
        shape = self.shapes[arg]
        if node.op == "call_function" and target in _CHANNEL_FUNCTIONS:
            return [(arg, _same_nodes(shape, result.shape))]
        if (node.op == "call_function" and target in _RESHAPE_FUNCTIONS) or (
            node.op == "call_method" and target in _RESHAPE_METHODS
        ):
            return [(arg, _reshape_map(shape, result.shape, result.device))]
        if (node.op == "call_function" and target in _REDUCE_FUNCTIONS) or (
            node.op == "call_method" and target in _REDUCE_METHODS
        ):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return [(arg, _reduce_map(dims, shape, result.shape))]
        if (node.op == "call_function" and target in _SOFTMAX_FUNCTIONS) or (
            node.op == "call_method" and target in _SOFTMAX_METHODS
        ):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return [(arg, _softmax_map(dim, shape, result))]
        raise _Unsupported("an operation whose connectivity is unknown")

    @staticmethod
    def _single(inputs: list[fx.Node]) -> list[fx.Node]:
        if len(inputs) != 1:
            raise _Unsupported(f"it combines {len(inputs)} tracked values")
        return inputs

    def _module_map(self, module: nn.Module, shape: torch.Size, result: Tensor) -> _Map:
        device = result.device
        if isinstance(module, nn.Linear):
            if len(shape) != 2:
                raise _Unsupported(
                    f"nn.Linear on a {len(shape)}-D input mixes its last dimension, not the nodes (dim 1)"
                )
            return (module.weight != 0).t()
        if isinstance(module, (nn.modules.conv._ConvNd)):
            return _conv_map(module)
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            if getattr(module, "weight", None) is None:
                return _same_nodes(shape, result.shape)
            _same_nodes(shape, result.shape)
            return torch.diag(module.weight != 0)
        if isinstance(module, nn.GroupNorm):
            units = _same_nodes_count(shape, result.shape)
            size = units // module.num_groups
            group = torch.arange(units, device=device) // size
            mapping = group.unsqueeze(1) == group.unsqueeze(0)
            return mapping & (module.weight != 0).unsqueeze(0) if module.weight is not None else mapping
        if isinstance(module, nn.LayerNorm):
            units = _same_nodes_count(shape, result.shape)
            if len(module.normalized_shape) < len(shape) - 1:
                return _IDENTITY  # normalises within each node only
            mapping = torch.ones(units, units, dtype=torch.bool, device=device)
            if module.weight is not None:
                mapping &= (module.weight.reshape(units, -1) != 0).any(1).unsqueeze(0)
            return mapping
        if isinstance(module, _ELEMENTWISE_MODULES + _CHANNEL_MODULES):
            return _same_nodes(shape, result.shape)
        if isinstance(module, (nn.Flatten, nn.Unflatten)):
            return _reshape_map(shape, result.shape, device)
        if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return _softmax_map(module.dim, shape, result)
        raise _Unsupported(f"a module of type {type(module).__name__}, whose connectivity is unknown")

    def _cat_maps(self, node: fx.Node, result: Tensor) -> list[tuple[fx.Node, _Map]]:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            raise _Unsupported("arguments that can't be read")
        dim %= result.dim()
        if dim == 0:
            raise _Unsupported("concatenation along the batch dimension")
        maps, offset, units = [], 0, _units(result.shape)
        for item in tensors:
            width = _units(self.shapes[item]) if isinstance(item, fx.Node) else 0
            if isinstance(item, fx.Node) and self.flows.get(item):
                if dim != 1:
                    maps.append((item, _same_nodes(self.shapes[item], result.shape)))
                else:
                    mapping = torch.zeros(width, units, dtype=torch.bool, device=result.device)
                    mapping[:, offset : offset + width] = torch.eye(
                        width, dtype=torch.bool, device=result.device
                    )
                    maps.append((item, mapping))
            offset += width if dim == 1 else 0
        return maps


def _describe(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        what = f"module {node.target!r} ({type(model.get_submodule(node.target)).__name__})"
    elif node.op == "call_method":
        what = f"method `Tensor.{node.target}`"
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", repr(node.target))
        module = getattr(node.target, "__module__", None)
        what = f"function `{module}.{name}`" if module else f"function `{name}`"
    else:
        what = f"{node.op} {node.target!r}"
    where = _source_line(node.stack_trace)
    return f"{what} (graph node {node.name!r}{', ' + where if where else ''})"


def _source_line(stack_trace: str | None) -> str:
    lines = [line.strip() for line in (stack_trace or "").splitlines() if line.strip().startswith("File ")]
    return lines[-1] if lines else ""


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    else:
        yield value


def _same_nodes_count(shape: Sequence[int], out_shape: Sequence[int]) -> int:
    if len(shape) < 2 or len(shape) != len(out_shape) or shape[1] != out_shape[1]:
        raise _Unsupported(
            f"it maps shape {tuple(shape)} to {tuple(out_shape)} without keeping the nodes (dim 1)"
        )
    return int(shape[1])


def _same_nodes(shape: Sequence[int], out_shape: Sequence[int]) -> _Map:
    _same_nodes_count(shape, out_shape)
    return _IDENTITY


def _broadcast(shape: Sequence[int], out_shape: Sequence[int], device: torch.device) -> _Map:
    """Elementwise op: node to the same node, or a broadcast single node to every node."""
    if len(shape) == len(out_shape) and len(shape) >= 2 and shape[1] == 1 and out_shape[1] != 1:
        return torch.ones(1, int(out_shape[1]), dtype=torch.bool, device=device)
    return _same_nodes(shape, out_shape)


def _reshape_map(shape: Sequence[int], out_shape: Sequence[int], device: torch.device) -> _Map:
    """Row-major reshape within each sample: every element keeps its place in memory order."""
    per_sample = math.prod(shape[1:])
    if (
        len(shape) < 2
        or len(out_shape) < 2
        or shape[0] != out_shape[0]
        or per_sample != math.prod(out_shape[1:])
    ):
        raise _Unsupported(
            f"a reshape from {tuple(shape)} to {tuple(out_shape)} that doesn't keep the batch dimension"
        )
    if len(shape) == len(out_shape) and tuple(shape) == tuple(out_shape):
        return _IDENTITY
    position = torch.arange(per_sample, device=device)
    source = position // math.prod(shape[2:])  # node (dim 1) of each element before ...
    target = position // math.prod(out_shape[2:])  # ... and after
    mapping = torch.zeros(int(shape[1]), int(out_shape[1]), dtype=torch.bool, device=device)
    mapping[source, target] = True
    return mapping


def _reduce_map(dims: Any, shape: Sequence[int], out_shape: Sequence[int]) -> _Map:
    if dims is None:
        raise _Unsupported("a reduction over every dimension")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if any(not isinstance(d, int) for d in dims) or {d % len(shape) for d in dims} & {0, 1}:
        raise _Unsupported(f"a reduction over dimensions {dims}, which include the batch or the nodes")
    if out_shape[1] != shape[1]:
        raise _Unsupported(f"a reduction from {tuple(shape)} to {tuple(out_shape)}")
    return _IDENTITY


def _softmax_map(dim: Any, shape: Sequence[int], result: Tensor) -> _Map:
    if not isinstance(dim, int):
        raise _Unsupported("a softmax without an explicit `dim`")
    _same_nodes_count(shape, result.shape)
    if dim % len(shape) != 1:
        return _IDENTITY
    units = int(shape[1])
    return torch.ones(units, units, dtype=torch.bool, device=result.device)


def _conv_map(module: nn.modules.conv._ConvNd) -> Tensor:
    """Channel p -> channel q wherever any kernel weight between them is nonzero (groups respected)."""
    weight = module.weight
    # (out, in/groups) for a convolution, (in, out/groups) for a transposed one.
    nonzero = (weight != 0).flatten(2).any(2)
    if module.transposed:
        nonzero = nonzero.t()  # now (out/groups, in), indexed [q within group, p]
        per_group_out, in_channels = nonzero.shape
        per_group_in = in_channels // module.groups
        out_channels = per_group_out * module.groups
        q = torch.arange(out_channels, device=weight.device)
        p = (q // per_group_out * per_group_in).unsqueeze(1) + torch.arange(
            per_group_in, device=weight.device
        )
        values = nonzero[q % per_group_out].gather(1, p)  # (out, in/groups)
    else:
        out_channels, per_group_in = nonzero.shape
        per_group_out = out_channels // module.groups
        in_channels = per_group_in * module.groups
        q = torch.arange(out_channels, device=weight.device)
        p = (q // per_group_out * per_group_in).unsqueeze(1) + torch.arange(
            per_group_in, device=weight.device
        )
        values = nonzero
    mapping = torch.zeros(in_channels, out_channels, dtype=torch.bool, device=weight.device)
    mapping[p, q.unsqueeze(1).expand_as(p)] = values
    return mapping
