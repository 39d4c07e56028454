"""What the window installs: the frames of module calls in progress, and the mode that sees activations.

Plain PyTorch, no Lightning. :class:`~emergence_lightning.measure.tracker.ActivityTracker` keeps a
:class:`Frame` per module call of its model (from global module hooks) and puts
:class:`ActivationCalls` on the torch function mode stack only while module code that needs it
runs: code that calls activation functions, code inside a mixture-of-experts block (whose weight
accesses tell which expert a row belongs to), and code that applies another module's weight
functionally (the producer that decides the node dimension).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from emergence_lightning import _compat
from emergence_lightning.measure import experts as moe
from emergence_lightning.measure import layers as rules


class ModuleFacts:
    """What the hooks need to know of one module, worked out once per window."""

    __slots__ = ("name", "leaf", "producer", "recurrent", "skip", "wrapper")

    def __init__(self, name: str, module: nn.Module, skip: bool, wrapper: bool) -> None:
        self.name, self.skip, self.wrapper = name, skip, wrapper
        self.leaf = next(iter(module.children()), None) is None
        self.producer = rules.is_producer(module)
        self.recurrent = rules.is_recurrent(module)


class Frame:
    """A module call in progress."""

    __slots__ = (
        "module", "info", "name", "leaf", "producer", "skip", "saw_activation", "body_activation",
        "body_foreign_weight", "learning", "intercepting", "input_shape", "routing", "deferred",
    )  # fmt: skip

    def __init__(
        self, module: nn.Module, info: ModuleFacts, producer: nn.Module | None, skip: bool, args: tuple
    ) -> None:
        self.module, self.info, self.name, self.leaf = module, info, info.name, info.leaf
        self.producer, self.skip = producer, skip
        self.saw_activation = False  # a leaf: an activation ran in its forward (the module is one)
        self.body_activation = False  # an activation function ran in this module's own forward code
        self.body_foreign_weight = (
            False  # its own code applied another module's weight (F.conv1d(x, conv.weight))
        )
        self.learning = False  # this call finds out whether the module's own code calls activations
        self.intercepting = False  # the window's mode is on while this module's own code runs
        first = args[0] if args else None
        self.input_shape = tuple(first.shape) if isinstance(first, Tensor) else None
        self.routing: moe.Routing | None = None  # inside an MoE block: which expert rows belong to
        self.deferred: list | None = None  # a composite candidate: its inner activations, held back


class ActivationCalls(TorchFunctionMode):
    """Hands every activation function call to ``seen(name, args, output)`` and every other call
    to ``other(func, args, kwargs, output)`` (weight accesses and weights applied functionally).
    """

    def __init__(
        self,
        seen: Callable[[str, tuple, object], None],
        other: Callable[[object, tuple, dict | None, object], None],
    ) -> None:
        super().__init__()
        self.seen, self.other = seen, other

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        output = func(*args, **(kwargs or {}))
        name = rules.activation_name(func)
        if name is not None:
            self.seen(name, args, output)
        else:
            self.other(func, args, kwargs, output)
        return output


def metric_modules(model: nn.Module) -> set[int]:
    """torchmetrics metrics (and their submodules) inside the model: their sigmoids are no layers."""
    torchmetrics = sys.modules.get("torchmetrics")
    metric = getattr(torchmetrics, "Metric", None)
    if metric is None:
        return set()
    return {id(sub) for module in model.modules() if isinstance(module, metric) for sub in module.modules()}


def leave_mode(mode: TorchFunctionMode) -> None:
    """Pops ``mode`` even when other modes were pushed above it (and puts those back)."""
    stack = _compat.torch_function_mode_stack()
    if mode not in stack:
        return
    above = []
    while _compat.current_torch_function_mode() is not mode:
        above.append(_compat.pop_torch_function_mode())
    mode.__exit__(None, None, None)
    for other in reversed(above):
        _compat.push_torch_function_mode(other)
