"""Producers applied functionally: a module's weight used outside that module's own forward.

Plain PyTorch, no Lightning. HF Mamba runs its depthwise convolution as
``F.conv1d(x, self.conv1d.weight.unsqueeze(1))`` and its time-step projection as
``self.dt_proj.weight @ x``; a user's model may call ``F.linear(x, self.fc.weight)``. The module
itself never runs, so its forward hook cannot say that the layout changed. The output of such a
call fixes the node dimension of what follows just as the module's own output would: it is the
*producer* of the next activation, and its weight says where the features sit:

- ``F.linear(x, W)``, ``x @ W.T``, ``torch.addmm(b, x, W)``: the last dimension, ``W``'s rows;
- ``W @ x`` (the weight on the left): the second-to-last dimension;
- ``F.conv*d(x, W)``: dimension 1, ``W.shape[0]`` channels (``W.shape[1] * groups`` transposed).

A call made inside the forward of the module that owns the weight (``nn.Linear`` running its own
``F.linear``) is left to that module's hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LINEAR, _CONV, _CONV_TRANSPOSED, _MATMUL, _ADDMM = "linear", "conv", "conv_transpose", "matmul", "addmm"


def _functions() -> dict[object, str]:
    table: dict[object, str] = {F.linear: _LINEAR, torch.addmm: _ADDMM, torch.Tensor.addmm: _ADDMM}
    for name in ("conv1d", "conv2d", "conv3d"):
        table[getattr(F, name)] = _CONV
        table[getattr(torch, name)] = _CONV
    for name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        table[getattr(F, name)] = _CONV_TRANSPOSED
    for function in (
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.Tensor.matmul,
        torch.Tensor.mm,
        torch.Tensor.bmm,
    ):
        table[function] = _MATMUL
    table[torch.Tensor.__matmul__] = _MATMUL
    return table


#: Function -> how it applies a weight (``"linear"``, ``"conv"``, ``"matmul"`` ...).
PRODUCING_FUNCTIONS: dict[object, str] = _functions()


@dataclass(frozen=True)
class FunctionalProducer:
    """A module's weight applied by a function: where its output keeps the features, and how many."""

    module: nn.Module  # the weight's owner (``mixer.dt_proj``)
    name: str  # the owner's qualified name, for messages
    function: str  # ``"linear"``, ``"conv"``, ``"matmul"`` ...
    features: int
    dim: int  # the output's feature dimension: 1, -1 or -2
    output_shape: tuple[int, ...]

    @property
    def description(self) -> str:
        return f"{self.name}.weight applied by {self.function}"


def producing_kind(function: object) -> str | None:
    try:
        return PRODUCING_FUNCTIONS.get(function)
    except TypeError:
        return None


def weight_owner(tensor: object, owners: Mapping[int, tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    """The (name, module) owning ``tensor`` when it is one of the model's parameters or a view of one."""
    if not isinstance(tensor, Tensor):
        return None
    found = owners.get(id(tensor))
    if found is None and tensor._base is not None:
        found = owners.get(id(tensor._base))
    return found


def functional_producer(
    kind: str,
    args: tuple,
    kwargs: Mapping[str, Any],
    output: object,
    owners: Mapping[int, tuple[str, nn.Module]],
) -> FunctionalProducer | None:
    """The producer a weight-applying call makes, or None when no argument is the model's 2-D+ weight."""
    if not isinstance(output, Tensor) or output.dim() < 2:
        return None
    # (argument, side): for matmul, the dimension of the output that the weight's features are on.
    operands: list[tuple[object, int | None]]
    if kind in (_LINEAR, _CONV, _CONV_TRANSPOSED):
        operands = [(args[1] if len(args) > 1 else kwargs.get("weight"), None)]
    elif kind == _ADDMM:
        operands = [(args[2] if len(args) > 2 else kwargs.get("mat2"), -1)]
    else:  # matmul: a weight on the left keeps its rows on dim -2, on the right its columns on dim -1
        operands = [(args[0] if args else None, -2), (args[1] if len(args) > 1 else kwargs.get("other"), -1)]
    for weight, side in operands:
        owner = weight_owner(weight, owners)  # None for anything but a Tensor
        if owner is None or not isinstance(weight, Tensor) or weight.dim() < 2:
            continue
        if kind == _LINEAR:
            features, dim = weight.shape[0], -1
        elif kind == _CONV:
            features, dim = weight.shape[0], 1
        elif kind == _CONV_TRANSPOSED:
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            features, dim = weight.shape[1] * int(groups), 1
        else:
            dim = -2 if side == -2 else -1  # side is -2 or -1 here
            features = weight.shape[dim]
        if output.shape[dim] != features:
            continue  # a weight used some other way (a batched expert slice, a reshape): no claim
        return FunctionalProducer(owner[1], owner[0], kind, int(features), int(dim), tuple(output.shape))
    return None


def node_dim_from_functional(shape: tuple[int, ...], producer: FunctionalProducer) -> int | None:
    """The node dimension of an activation on ``shape`` that a functional producer fed.

    The dimension with the producer's feature count; when several have it, the one the producer
    put its features on (counted from the same end); None when no dimension, or several and not
    that one, has it.
    """
    if len(shape) <= 2:
        return len(shape) - 1
    own = producer.dim % len(shape) if producer.dim < 0 else producer.dim
    matching = [dim for dim in range(1, len(shape)) if shape[dim] == producer.features]
    if own in matching:
        return own
    return matching[0] if len(matching) == 1 else None
