"""How each operation maps the nodes of its input to the nodes of its output (dim 1 of a value).

A map is the identity or a boolean ``(nodes_in, nodes_out)`` matrix; a :class:`Flow` carries, for
one value of the traced graph, the maps from every tracked layer that reaches it. The tables say
which modules, functions and tensor methods keep nodes, keep channels, reshape, reduce,
concatenate or mix nodes (softmax). Plain PyTorch, no Lightning.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# How a value's nodes map to the nodes of an operation's output: the identity, or a boolean
# (units_in, units_out) matrix.
IDENTITY = "identity"
NodeMap = str | Tensor


class Unsupported(Exception):
    """An operation whose connectivity we don't know."""


ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.PReLU,
    nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip

# Spatial operations: every output channel depends on the same input channel only.
CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
    nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)  # fmt: skip

ELEMENTWISE_FUNCTIONS = {
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
ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "clamp", "clamp_",
    "clip", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "pow", "sqrt",
    "square", "contiguous", "clone", "detach", "float", "double", "half", "to", "type", "type_as",
}  # fmt: skip
CHANNEL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate, F.pad,
    torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d,
}  # fmt: skip
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
    "unflatten",
}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}
SOFTMAX_METHODS = {"softmax", "log_softmax"}


class Flow:
    """Which nodes of which tracked layers reach a value without crossing another tracked layer.

    ``sources[k]`` is the identity (the value *is* layer ``k``) or a boolean ``(n_k, units)``
    matrix. ``blocked`` explains why the value's connectivity is unknown, if it is.
    """

    def __init__(self, sources: dict[int, NodeMap] | None = None, blocked: str | None = None) -> None:
        self.sources = sources or {}
        self.blocked = blocked

    def __bool__(self) -> bool:
        return bool(self.sources) or self.blocked is not None


def compose(source: NodeMap, mapping: NodeMap) -> NodeMap:
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


def union(first: NodeMap, second: NodeMap, units: int, device: torch.device) -> NodeMap:
    if isinstance(first, str) and isinstance(second, str):
        return IDENTITY
    eye = torch.eye(units, dtype=torch.bool, device=device)
    return (eye if isinstance(first, str) else first) | (eye if isinstance(second, str) else second)


def node_count(shape: Sequence[int]) -> int:
    return int(shape[1])


def same_nodes_count(shape: Sequence[int], out_shape: Sequence[int]) -> int:
    if len(shape) < 2 or len(shape) != len(out_shape) or shape[1] != out_shape[1]:
        raise Unsupported(
            f"it maps shape {tuple(shape)} to {tuple(out_shape)} without keeping the nodes (dim 1)"
        )
    return int(shape[1])


def same_nodes(shape: Sequence[int], out_shape: Sequence[int]) -> NodeMap:
    same_nodes_count(shape, out_shape)
    return IDENTITY


def broadcast(shape: Sequence[int], out_shape: Sequence[int], device: torch.device) -> NodeMap:
    """Elementwise op: node to the same node, or a broadcast single node to every node."""
    if len(shape) == len(out_shape) and len(shape) >= 2 and shape[1] == 1 and out_shape[1] != 1:
        return torch.ones(1, int(out_shape[1]), dtype=torch.bool, device=device)
    return same_nodes(shape, out_shape)


def reshape_map(shape: Sequence[int], out_shape: Sequence[int], device: torch.device) -> NodeMap:
    """Row-major reshape within each sample: every element keeps its place in memory order."""
    per_sample = math.prod(shape[1:])
    if (
        len(shape) < 2
        or len(out_shape) < 2
        or shape[0] != out_shape[0]
        or per_sample != math.prod(out_shape[1:])
    ):
        raise Unsupported(
            f"a reshape from {tuple(shape)} to {tuple(out_shape)} that doesn't keep the batch dimension"
        )
    if len(shape) == len(out_shape) and tuple(shape) == tuple(out_shape):
        return IDENTITY
    position = torch.arange(per_sample, device=device)
    source = position // math.prod(shape[2:])  # node (dim 1) of each element before ...
    target = position // math.prod(out_shape[2:])  # ... and after
    mapping = torch.zeros(int(shape[1]), int(out_shape[1]), dtype=torch.bool, device=device)
    mapping[source, target] = True
    return mapping


def reduce_map(dims: Any, shape: Sequence[int], out_shape: Sequence[int]) -> NodeMap:
    if dims is None:
        raise Unsupported("a reduction over every dimension")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if any(not isinstance(d, int) for d in dims) or {d % len(shape) for d in dims} & {0, 1}:
        raise Unsupported(f"a reduction over dimensions {dims}, which include the batch or the nodes")
    if out_shape[1] != shape[1]:
        raise Unsupported(f"a reduction from {tuple(shape)} to {tuple(out_shape)}")
    return IDENTITY


def softmax_map(dim: Any, shape: Sequence[int], result: Tensor) -> NodeMap:
    if not isinstance(dim, int):
        raise Unsupported("a softmax without an explicit `dim`")
    same_nodes_count(shape, result.shape)
    if dim % len(shape) != 1:
        return IDENTITY
    units = int(shape[1])
    return torch.ones(units, units, dtype=torch.bool, device=result.device)


def conv_map(module: nn.modules.conv._ConvNd) -> Tensor:
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
