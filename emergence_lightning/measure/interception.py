"""What the window installs: module hooks, the frames of module calls in progress, and the mode
that sees activations.

Plain PyTorch, no Lightning. :class:`~emergence_lightning.measure.tracker.ActivityTracker` keeps a
:class:`Frame` per call of the modules it hooks fully and puts :class:`ActivationCalls` on the
torch function mode stack only while module code that needs it runs: code that calls activation
functions, code inside a mixture-of-experts block (whose weight accesses tell which expert a row
belongs to), and code that applies another module's weight functionally (the producer that
decides the node dimension). Which modules get which hooks is :func:`hook_plan`'s decision.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from emergence_lightning import _compat
from emergence_lightning.measure import experts as moe
from emergence_lightning.measure import layers as rules
from emergence_lightning.measure.statistics import LayoutStep


class ModuleFacts:
    """What the hooks need to know of one module, worked out once per window."""

    __slots__ = ("name", "leaf", "producer", "recurrent", "skip", "wrapper", "uncallable")

    def __init__(self, name: str, module: nn.Module, skip: bool, wrapper: bool) -> None:
        self.name, self.skip, self.wrapper = name, skip, wrapper
        self.leaf = next(iter(module.children()), None) is None
        # A container with no forward (ModuleList, ModuleDict): calling it raises, so no code of its
        # own ever calls its children; whoever owns it does.
        self.uncallable = type(module).forward is nn.Module.forward and "forward" not in vars(module)
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


class LeafShortcut:
    """What an activation leaf's last recorded output passed through (the tracker's ``_record``):
    its call site and layout, and the step that added it. The leaf's next output of the same layout
    and train/eval mode (a plain tensor, its site's first call in a pass, while the step is
    usable) is added by that step at once (``ModuleCalls._leaf_ends``): the checks it would meet
    again were passed, and a layer's hook runs between the model's own kernels with cold caches,
    where every line of Python costs several times what it costs in a loop.
    """

    __slots__ = ("site", "shape", "stride", "dtype", "device", "training", "step", "numel")

    def __init__(self, site: str, output: Tensor, training: bool, step: LayoutStep) -> None:
        self.site, self.training, self.step, self.numel = site, training, step, output.numel()
        self.shape, self.stride, self.dtype, self.device = (
            output.shape, output.stride(), output.dtype, output.device
        )  # fmt: skip

    def __reduce__(self) -> tuple:  # a copy of the tracker keeps none: its step adds into our totals
        return (_no_shortcut, ())


def _no_shortcut() -> None:
    return None


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


def inert(*args: object) -> None:
    """What a copy of a window's hook is: nothing (see :class:`WindowHook`)."""


def _inert() -> Callable[..., None]:
    return inert


class WindowHook:
    """A module hook of the window. The hooks sit in the modules' own hook dictionaries, so a model
    deep-copied or pickled while a window is open (an EMA copy, a snapshot, ``torch.save(model)``)
    carries them: its copy is :func:`inert`, so the copy neither reports to this tracker nor drags
    the tracker along (a bound method would deep-copy it).
    """

    __slots__ = ("function",)

    def __init__(self, function: Callable[..., None]) -> None:
        self.function = function

    def __call__(self, *args: object) -> None:
        self.function(*args)

    def __deepcopy__(self, memo: dict) -> Callable[..., None]:
        return inert

    def __reduce__(self) -> tuple:
        return (_inert, ())


#: Learned on a module's first fully hooked call, per ``(id(module), module.training)``: whether its
#: own forward code calls an activation function, and whether it applies another module's weight.
Learned = dict[tuple[int, bool], tuple[bool, bool]]


def needs_mode(facts: ModuleFacts, learned: tuple[bool, bool]) -> bool:
    """Whether the window's mode must be on while this (non-leaf) module's own code runs."""
    return not facts.leaf and (learned[0] or learned[1])


def hook_plan(
    named: list[tuple[str, nn.Module]],
    facts: dict[int, ModuleFacts],
    learned: Learned,
    callers: dict[int, set[int | None]],
    always: set[int],
    subtrees: set[int],
    producers: bool = True,
) -> tuple[list[nn.Module], list[nn.Module]]:
    """Which modules the window hooks: ``(full, leaves)``.

    Every hook costs: torch then runs the module call through its slow path, and the tracker's
    Python runs. Once a module's facts are learned, most modules need none:

    - *fully* (a pre- and a post-hook, a frame per call): the root; every module not yet learned in
      its current train/eval mode (its first call learns); the modules in ``always`` (expert
      blocks, composite candidates, the input/output modules, modules named in ``layers``) and
      everything inside ``subtrees`` (expert blocks, composite candidates, metrics); recurrent
      modules; non-leaf producers; modules whose own code needs the mode; and every module called
      from such code (its frame turns the mode off while it runs): each one seen called from it,
      and every child of it, called or not yet (the children of a ModuleList or ModuleDict it
      owns included: such a container has no code, so its children are those of its owner).
    - *a post-hook only*: a learned leaf that is an activation (its output is a layer) or, with
      ``producers``, a producer (the node layout of what follows); nothing happens inside a leaf
      that needs a frame. Producers matter only to a layer seen for the first time, so once every
      module is learned the tracker leaves them out (see ``ActivityTracker._record``).
    - *none*: the rest (containers, dropout, attention blocks whose code calls no activation).
    """
    by_id = {id(module): module for _, module in named}

    def mode_on_in(caller: int | None) -> bool:
        if caller is None:
            return False
        module = by_id.get(caller)
        if module is None or caller in subtrees:
            return True  # unknown, or inside a block whose code is always seen
        known = learned.get((caller, module.training))
        return known is None or needs_mode(facts[caller], known)

    ids = {name: id(module) for name, module in named}

    def parent_needs_mode(name: str) -> bool:
        while name:
            name = name.rpartition(".")[0]
            parent = ids.get(name, -1)
            if parent not in facts or not facts[parent].uncallable:
                return mode_on_in(parent)
        return False

    full: list[nn.Module] = []
    leaves: list[nn.Module] = []
    for name, module in named:
        key = id(module)
        info = facts[key]
        if info.wrapper and key not in always:
            continue
        known = learned.get((key, module.training))
        if (
            known is None
            or key in always
            or key in subtrees
            or info.skip
            or info.recurrent
            or (not info.leaf and info.producer)
            or needs_mode(info, known)
            or any(mode_on_in(caller) for caller in callers.get(key, {-1}))  # -1: never seen called
            or parent_needs_mode(name)
        ):
            full.append(module)
        elif info.leaf and (known[0] or (producers and info.producer)):
            leaves.append(module)
    return full, leaves


def inside(named: list[tuple[str, nn.Module]], roots: set[int]) -> set[int]:
    """Ids of the modules in ``roots`` and of every module below one of them (by qualified name)."""
    names = {name for name, module in named if id(module) in roots}
    found = set()
    for name, module in named:
        prefix = name
        while True:
            if prefix in names:
                found.add(id(module))
                break
            if not prefix:
                break
            prefix = prefix.rpartition(".")[0]
    return found


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
