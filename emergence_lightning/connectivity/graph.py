"""The edges between tracked layers, derived from a model's weights by tracing it with ``torch.fx``.

Each operation's node map comes from :mod:`.node_maps`; composing them along the graph gives, for
every pair of tracked layers, which nodes reach which without crossing another tracked layer.
Plain PyTorch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from emergence_lightning import _compat
from emergence_lightning.connectivity import node_maps
from emergence_lightning.measure.layers import INPUT_LAYER, OUTPUT_LAYER, parametrised_leaves

_DENSE_WAY_OUT = (
    "Way out: name the tracked layers explicitly with modules that `torch.fx` can see, replace the "
    "operation by a supported module, or use the dense formula (`emergence(n, a)`, the callback's "
    "`connectivity='dense'`), which needs no graph."
)


class ConnectivityError(RuntimeError):
    """The model's graph could not be turned into edges between the tracked layers."""


_WEIGHT_HOOKS = (prune.BasePruningMethod, WeightNorm, SpectralNorm)


def build_edges(
    model: nn.Module,
    layer_names: Sequence[str],
    example_input: Tensor,
) -> dict[tuple[int, int], Tensor]:
    """Edges between the tracked layers of ``model``, read from its weights via ``torch.fx``.

    A layer is the output of a module named in ``layer_names`` (qualified names from
    ``model.named_modules()``, e.g. its ReLUs); its nodes are the features of a ``(batch,
    features)`` output or the channels (dim 1) of a ``(batch, channels, ...)`` output.
    ``"model-input"`` and ``"model-output"`` name the input of the first and the output of the last
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
    pseudo: dict[str, Any] = {
        INPUT_LAYER: leaves[0] if leaves else None,
        OUTPUT_LAYER: leaves[-1] if leaves else None,
    }
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


def _tracked_nodes(graph: fx.Graph, names: list[str], pseudo: dict[str, Any]) -> dict[fx.Node, int]:
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


class _Propagator(fx.Interpreter):
    """Runs the traced model once and composes each value's :class:`~.node_maps.Flow` from its inputs'."""

    def __init__(
        self, module: fx.GraphModule, model: nn.Module, tracked: dict[fx.Node, int], names: list[str]
    ) -> None:
        super().__init__(module)
        self.model = model
        self.tracked = tracked
        self.names = names
        self.flows: dict[fx.Node, node_maps.Flow] = {}
        self.shapes: dict[fx.Node, torch.Size] = {}
        self.edges: dict[tuple[int, int], Tensor] = {}

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:  # type: ignore[override]  # fx: a module call's target is its name
        # Other hooks stay silent, so measuring connectivity never feeds an activity tracker or
        # trips its shared-module check; only reparametrisations that compute the effective
        # weight (pruning masks, old-style weight/spectral norm) run first.
        module = self.fetch_attr(target)
        for hook in _compat.forward_pre_hooks(module):
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

    def _flow(self, node: fx.Node, result: Any) -> node_maps.Flow:
        inputs = [arg for arg in node.all_input_nodes if self.flows.get(arg)]
        if not inputs or node.op == "output":
            return node_maps.Flow()
        blocked = next((self.flows[arg].blocked for arg in inputs if self.flows[arg].blocked), None)
        if blocked:
            return node_maps.Flow(blocked=blocked)
        if not isinstance(result, Tensor):
            # Sizes and other plain values carry no data; tuples of tensors (split, chunk) we can't follow.
            if any(isinstance(item, Tensor) for item in _flatten(result)):
                return node_maps.Flow(blocked=f"{_describe(node, self.model)} returns several tensors")
            return node_maps.Flow()
        try:
            if result.dim() < 2:
                raise node_maps.Unsupported(
                    f"its output has shape {tuple(result.shape)}, without a node dimension"
                )
            maps = self._maps(node, result, inputs)
        except node_maps.Unsupported as reason:
            return node_maps.Flow(blocked=f"{_describe(node, self.model)} ({reason})")
        sources: dict[int, node_maps.NodeMap] = {}
        units = node_maps.node_count(result.shape)
        for arg, mapping in maps:
            for layer, source in self.flows[arg].sources.items():
                routed = node_maps.compose(source, mapping)
                sources[layer] = (
                    routed
                    if layer not in sources
                    else node_maps.union(sources[layer], routed, units, result.device)
                )
        return node_maps.Flow(sources)

    def _track(self, node: fx.Node, flow: node_maps.Flow, result: Any) -> node_maps.Flow:
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
        units = node_maps.node_count(result.shape)
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
        return node_maps.Flow({index: node_maps.IDENTITY})

    # ---- per-operation connectivity -------------------------------------------------------
    def _maps(
        self, node: fx.Node, result: Tensor, inputs: list[fx.Node]
    ) -> list[tuple[fx.Node, node_maps.NodeMap]]:
        """``(input value, map from its nodes to the result's)`` for every input that carries a flow."""
        if node.op == "call_module":
            module = self.model.get_submodule(str(node.target))  # a module call's target is its name
            (arg,) = self._single(inputs)
            return [(arg, self._module_map(module, self.shapes[arg], result))]
        target = node.target
        if node.op == "call_function" and target in node_maps.CAT_FUNCTIONS:
            return self._cat_maps(node, result)
        if (node.op == "call_function" and target in node_maps.ELEMENTWISE_FUNCTIONS) or (
            node.op == "call_method" and target in node_maps.ELEMENTWISE_METHODS
        ):
            return [
                (arg, node_maps.broadcast(self.shapes[arg], result.shape, result.device)) for arg in inputs
            ]
        (arg,) = self._single(inputs)
        shape = self.shapes[arg]
        if node.op == "call_function" and target in node_maps.CHANNEL_FUNCTIONS:
            return [(arg, node_maps.same_nodes(shape, result.shape))]
        if (node.op == "call_function" and target in node_maps.RESHAPE_FUNCTIONS) or (
            node.op == "call_method" and target in node_maps.RESHAPE_METHODS
        ):
            return [(arg, node_maps.reshape_map(shape, result.shape, result.device))]
        if (node.op == "call_function" and target in node_maps.REDUCE_FUNCTIONS) or (
            node.op == "call_method" and target in node_maps.REDUCE_METHODS
        ):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return [(arg, node_maps.reduce_map(dims, shape, result.shape))]
        if (node.op == "call_function" and target in node_maps.SOFTMAX_FUNCTIONS) or (
            node.op == "call_method" and target in node_maps.SOFTMAX_METHODS
        ):
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            return [(arg, node_maps.softmax_map(dim, shape, result))]
        raise node_maps.Unsupported("an operation whose connectivity is unknown")

    @staticmethod
    def _single(inputs: list[fx.Node]) -> list[fx.Node]:
        if len(inputs) != 1:
            raise node_maps.Unsupported(f"it combines {len(inputs)} tracked values")
        return inputs

    def _module_map(self, module: nn.Module, shape: torch.Size, result: Tensor) -> node_maps.NodeMap:
        device = result.device
        if isinstance(module, nn.Linear):
            if len(shape) != 2:
                raise node_maps.Unsupported(
                    f"nn.Linear on a {len(shape)}-D input mixes its last dimension, not the nodes (dim 1)"
                )
            return (module.weight != 0).t()
        if isinstance(module, (nn.modules.conv._ConvNd)):
            return node_maps.conv_map(module)
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            if getattr(module, "weight", None) is None:
                return node_maps.same_nodes(shape, result.shape)
            node_maps.same_nodes(shape, result.shape)
            return torch.diag(module.weight != 0)
        if isinstance(module, nn.GroupNorm):
            units = node_maps.same_nodes_count(shape, result.shape)
            size = units // module.num_groups
            group = torch.arange(units, device=device) // size
            mapping = group.unsqueeze(1) == group.unsqueeze(0)
            return mapping & (module.weight != 0).unsqueeze(0) if module.weight is not None else mapping
        if isinstance(module, nn.LayerNorm):
            units = node_maps.same_nodes_count(shape, result.shape)
            if len(module.normalized_shape) < len(shape) - 1:
                return node_maps.IDENTITY  # normalises within each node only
            mapping = torch.ones(units, units, dtype=torch.bool, device=device)
            if module.weight is not None:
                mapping &= (module.weight.reshape(units, -1) != 0).any(1).unsqueeze(0)
            return mapping
        if isinstance(module, node_maps.ELEMENTWISE_MODULES + node_maps.CHANNEL_MODULES):
            return node_maps.same_nodes(shape, result.shape)
        if isinstance(module, (nn.Flatten, nn.Unflatten)):
            return node_maps.reshape_map(shape, result.shape, device)
        if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return node_maps.softmax_map(module.dim, shape, result)
        raise node_maps.Unsupported(
            f"a module of type {type(module).__name__}, whose connectivity is unknown"
        )

    def _cat_maps(self, node: fx.Node, result: Tensor) -> list[tuple[fx.Node, node_maps.NodeMap]]:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            raise node_maps.Unsupported("arguments that can't be read")
        dim %= result.dim()
        if dim == 0:
            raise node_maps.Unsupported("concatenation along the batch dimension")
        maps, offset, units = [], 0, node_maps.node_count(result.shape)
        for item in tensors:
            width = node_maps.node_count(self.shapes[item]) if isinstance(item, fx.Node) else 0
            if isinstance(item, fx.Node) and self.flows.get(item):
                if dim != 1:
                    maps.append((item, node_maps.same_nodes(self.shapes[item], result.shape)))
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
        what = f"module {node.target!r} ({type(model.get_submodule(str(node.target))).__name__})"
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
