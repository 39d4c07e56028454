"""What the window's hooks see of module calls: the hook plan, frames, learning, call sites.

Plain PyTorch, no Lightning. :class:`ModuleCalls` is the part of
:class:`~emergence_lightning.measure.tracker.ActivityTracker` that its module hooks and its
``TorchFunctionMode`` call into: which modules to hook (:func:`~.interception.hook_plan`), a frame
per call of a fully hooked module, what a module's first call learns of its code, the mode turned
on only where that code needs it, activation outputs and call sites handed to the tracker's
``_record``, mixture-of-experts rows split by expert. The tracker owns the state (declared below)
and the accumulation and result.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from emergence_lightning import _compat
from emergence_lightning.measure import experts as moe
from emergence_lightning.measure import layers as rules
from emergence_lightning.measure import producers
from emergence_lightning.measure.interception import (
    ActivationCalls,
    Frame,
    LeafShortcut,
    Learned,
    ModuleFacts,
    WindowHook,
    hook_plan,
    inside,
)
from emergence_lightning.measure.statistics import LayoutStep, NodeStatistic, Scratch

_TRAINING = operator.attrgetter("training")


class ModuleCalls:
    """The hook side of :class:`~emergence_lightning.measure.tracker.ActivityTracker` (a mixin)."""

    # The tracker's state these methods read and write (set in ActivityTracker.__init__).
    model: nn.Module
    statistic: str
    threshold: float
    enabled: bool
    _wanted: set[str]
    _input_module: nn.Module | None
    _output_module: nn.Module | None
    _input_name: str
    _output_name: str
    _stats: dict[str, NodeStatistic | moe.ExpertStatistic]
    _layout: dict[str, tuple[int, int]]
    _first_seen: dict[str, int]
    _calls: Counter[str]
    _stack: list[Frame]
    _modules: dict[int, ModuleFacts]
    _learned: Learned
    _callers: dict[int, set[int | None]]
    _named: list[tuple[str, nn.Module]]
    _module_list: list[nn.Module]  # the modules of _named
    _plan: tuple[tuple[bool, ...], int, bool, int] | None
    _callers_seen: int
    _planned: tuple[object, list[nn.Module], list[nn.Module], bool] | None
    _tree: dict[int, tuple[str, type]]
    _producers_needed: bool
    _producers_hooked: bool
    _learned_before: int
    _flags_before: tuple[bool, ...]
    _intercepting: bool
    _module_names: frozenset[str]
    _site_of: dict[str, str]
    _last_producer: nn.Module | None
    _producer_shapes: dict[int, torch.Size]
    _handles: list[RemovableHandle]
    _mode: ActivationCalls | None
    _module_calls: int
    _sample_limit: int | None
    _expert_groups: dict[int, tuple[moe.ExpertGroup, str, int | None]]
    _owners: dict[int, tuple[str, nn.Module]] | None
    _composite: set[int]
    _previous_calls: dict[str, int] | None
    _shortcuts: dict[int, LeafShortcut]
    _scratch: Scratch

    if TYPE_CHECKING:  # the tracker's accumulation, which these methods hand outputs to

        def _record(
            self,
            site: str,
            output: object,
            producer: nn.Module | None,
            batch_dim: int = 0,
            once: bool = False,
            producer_known: bool = False,
            non_negative: bool = False,
        ) -> LayoutStep | None: ...

        def _producer_unknown(self, name: str, producer_known: bool) -> bool: ...

        def _decide_node_dim(
            self, name: str, output: Tensor, producer: nn.Module | None, batch_dim: int
        ) -> int: ...

        def _warn_once(self, key: str, message: str) -> None: ...

    # ---- the hook plan ------------------------------------------------------------------
    def _install_hooks(self) -> None:
        """Hooks the modules the measurement needs, for the current train/eval modes and facts learned.

        Planned again between forward passes when a module changed mode or new facts were learned.
        """
        flags = tuple(map(_TRAINING, self._module_list))  # (per pass: a C loop, not a generator)
        # Still learning (a module's first call ran since the last plan, or modules changed mode):
        # producers stay hooked.
        learning = len(self._learned) != self._learned_before or flags != self._flags_before
        self._learned_before, self._flags_before = len(self._learned), flags
        producers = self._producers_needed or learning
        plan = (flags, len(self._learned), producers, self._callers_seen)
        if plan == self._plan:
            return
        self._remove_hooks()
        self._plan = plan
        # The same plan as a window before (the tree, its expert blocks and what was learned unchanged).
        key = (plan, id(self._tree), tuple(self._expert_groups), frozenset(self._composite))
        if self._planned is None or self._planned[0] != key:
            self._planned = (key, *self._planned_hooks(producers))
        _, full, leaves, self._producers_hooked = self._planned
        starts, ends, leaf_ends = (
            WindowHook(f) for f in (self._module_starts, self._module_ends, self._leaf_ends)
        )
        for module in full:
            self._handles.append(module.register_forward_pre_hook(starts))
            self._handles.append(module.register_forward_hook(ends, always_call=True))
        for module in leaves:
            self._handles.append(module.register_forward_hook(leaf_ends))

    def _planned_hooks(self, producers: bool) -> tuple[list[nn.Module], list[nn.Module], bool]:
        """The modules to hook fully and post-only, and whether every producer is hooked."""
        always = {id(self.model)} | set(self._expert_groups) | self._composite
        always |= {id(m) for m in (self._input_module, self._output_module) if m is not None}
        always |= {id(module) for name, module in self._named if name in self._wanted}
        skipped = {key for key, info in self._modules.items() if info.skip}
        subtrees = inside(self._named, set(self._expert_groups) | self._composite | skipped)
        full, leaves = hook_plan(
            self._named, self._modules, self._learned, self._callers, always, subtrees, producers
        )
        hooked = {id(module) for module in (*full, *leaves)}
        producers_hooked = all(  # (a wrapper never gets a frame: its module does)
            id(module) in hooked
            for _, module in self._named
            if self._modules[id(module)].producer and not self._modules[id(module)].wrapper
        )
        return full, leaves, producers_hooked

    def _remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    # ---- what the hooks see --------------------------------------------------------------
    def _module_starts(self, module: nn.Module, args: tuple) -> None:
        # Bookkeeping only: with __torch_function__ off, the window's mode does not see each `.shape`
        # read here (ResNet-18: 325 -> 89 intercepted calls a forward pass).
        with _compat.DisableTorchFunction():
            self._enter(module, args)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        info = self._modules.get(id(module))
        if info is None:  # another model, or a copy of this one
            return
        if not self._stack:
            self._module_calls += 1
            if module is self.model:
                self._compare_call_counts()
                self._calls.clear()
        if info.wrapper:
            return
        skip = info.skip or bool(self._stack and self._stack[-1].skip)
        frame = Frame(module, info, self._last_producer, skip, args)
        expert = self._expert_groups.get(id(module))
        if expert is not None:
            frame.routing = moe.Routing(*expert)
        elif self._stack:
            frame.routing = self._stack[-1].routing
        if id(module) in self._composite:
            frame.deferred = []
        self._stack.append(frame)
        # Most torch calls are no activations, and each one the mode sees costs a Python call. A
        # module's first call in this window runs intercepted and shows whether its own code needs
        # the mode: it calls an activation function, or applies another module's weight (a producer
        # for what follows); later calls intercept only such code (an activation module is then
        # known to be one without looking). Inside an MoE block every call is seen: the weight
        # accesses tell which expert each row belongs to.
        if not skip:
            learned = self._learned.get((id(module), module.training))
            frame.learning = learned is None
            # Who calls it (on every call it is hooked for): a caller whose code needs the mode keeps it hooked.
            caller = id(self._stack[-2].module) if len(self._stack) > 1 else None
            seen = self._callers.setdefault(id(module), set())
            if caller not in seen:
                seen.add(caller)
                self._callers_seen += 1  # planned again at the next pass
            activation, foreign_weight = learned or (False, False)
            frame.saw_activation = activation and info.leaf
            frame.intercepting = (
                frame.learning
                or frame.routing is not None
                or (not info.leaf and (activation or foreign_weight))
            )
        self._intercept(frame.intercepting)
        if module is self._input_module and not skip and args and isinstance(args[0], Tensor):
            self._record(self._input_name, args[0], producer=None, once=True, producer_known=True)

    def _intercept(self, on: bool) -> None:
        """Puts the window's mode on the torch function mode stack, or takes it off."""
        if on == self._intercepting or self._mode is None:
            return
        if on:
            _compat.push_torch_function_mode(self._mode)
            self._intercepting = True
        elif _compat.current_torch_function_mode() is self._mode:  # another mode above: leave it
            _compat.pop_torch_function_mode()
            self._intercepting = False

    def _module_ends(self, module: nn.Module, args: tuple, output: object) -> None:
        with _compat.DisableTorchFunction():
            self._leave(module, output)

    def _leave(self, module: nn.Module, output: object) -> None:
        info = self._modules.get(id(module))
        if info is None or info.wrapper:
            return
        while self._stack and self._stack[-1].module is not module:
            self._stack.pop()  # frames left by an exception
        if not self._stack:
            return
        frame = self._stack.pop()
        self._intercept(self._stack[-1].intercepting if self._stack else False)
        if frame.skip:
            return
        if frame.learning:
            self._learned[id(module), module.training] = (frame.body_activation, frame.body_foreign_weight)
        if frame.deferred and self._close_composite(frame, output):
            pass  # recorded at the module's output; its inner activation was held back
        elif info.recurrent:
            self._record_recurrent(frame.name, module, output)
        elif frame.saw_activation or frame.name in self._wanted:
            same_shape = isinstance(output, Tensor) and tuple(output.shape) == frame.input_shape
            producer = frame.producer if same_shape or not info.producer else module
            parent = self._stack[-1] if self._stack else None
            if frame.saw_activation and frame.leaf and parent is not None and parent.deferred is not None:
                parent.deferred.append((frame, producer, output))  # maybe the inner ReLU of a StarReLU
            elif frame.saw_activation:
                self._record_site(
                    frame,
                    frame.name,
                    output,
                    producer,
                    producer_known=producer is module,
                    non_negative=type(module) in rules.NON_NEGATIVE_MODULES,
                )
            else:
                self._record(frame.name, output, producer=producer, producer_known=producer is module)
        if info.producer and not frame.saw_activation:
            self._last_producer = module
            if isinstance(output, Tensor):
                self._producer_shapes[id(module)] = output.shape
        if module is self._output_module:
            self._record(self._output_name, output, producer=module, once=True, producer_known=True)

    def _leaf_ends(self, module: nn.Module, args: tuple, output: object) -> None:
        """A learned leaf's one hook: an activation's output is a layer; a producer's sets the node
        layout of what follows. As :meth:`_leave` does, with no frame (nothing inside a leaf needs one).
        """
        with _compat.DisableTorchFunction():
            shortcut = self._shortcuts.get(id(module))
            # The shortcut's checks, written out here: a hook runs with cold caches, where each
            # Python call between the model's kernels costs about a microsecond.
            if (
                shortcut is not None
                and self.enabled
                and self._sample_limit is None
                and type(output) is Tensor
                and not output.is_nested
                and output.shape == shortcut.shape
                and output.stride() == shortcut.stride
                and output.dtype == shortcut.dtype
                and output.device == shortcut.device
                and module.training == shortcut.training
                and not self._calls.get(shortcut.site)
            ):
                known_step = shortcut.step
                if known_step.current and known_step.generation == self._scratch.generation:
                    if not self._stack:
                        self._module_calls += 1
                    self._calls[shortcut.site] = 1
                    known_step.step(output.detach() if output.requires_grad else output)
                    statistic = known_step.statistic
                    statistic.rows += known_step.rows
                    statistic._fresh = False
                    return
            info = self._modules.get(id(module))
            if info is None:  # not this tracker's model (its hooks were copied with it)
                return
            if not self._stack:
                self._module_calls += 1
            known = self._learned.get((id(module), module.training))
            if known is None:  # its mode changed after the plan (between passes it is planned again)
                self._plan = None
                known = self._learned.get((id(module), not module.training), (False, False))
            if known[0]:  # an activation module
                first = args[0] if args else None
                same_shape = (
                    isinstance(output, Tensor) and isinstance(first, Tensor) and output.shape == first.shape
                )
                producer = self._last_producer if same_shape or not info.producer else module
                step = self._record(
                    info.name,
                    output,
                    producer=producer,
                    producer_known=producer is module,
                    non_negative=type(module) in rules.NON_NEGATIVE_MODULES,
                )
                if step is not None and type(output) is Tensor:
                    self._keep_shortcut(module, info.name, output, step)
            elif info.producer:
                self._last_producer = module
                if isinstance(output, Tensor):
                    self._producer_shapes[id(module)] = output.shape

    def _keep_shortcut(self, module: nn.Module, site: str, output: Tensor, step: LayoutStep) -> None:
        """Keeps the shortcut of the larger batch: a run's last, smaller batch does not replace the
        full batches' (one full path per window for it, not two).
        """
        kept = self._shortcuts.get(id(module))
        if kept is None or not kept.step.usable(self._scratch.generation) or output.numel() >= kept.numel:
            self._shortcuts[id(module)] = LeafShortcut(site, output, module.training, step)

    def _close_composite(self, frame: Frame, output: object) -> bool:
        """Records a composite activation module (StarReLU) at its output and returns True, or
        records the activations held back inside it as usual and returns False.
        """
        held, frame.deferred = frame.deferred or [], None
        if len(held) == 1 and rules.is_composite_output(output, held[0][2]):
            frame.saw_activation = True  # an activation now, not a producer
            self._record_site(frame, frame.name, output, held[0][1])
            return True
        for inner, producer, inner_output in held:
            self._record_site(inner, inner.name, inner_output, producer)
        return False

    def _activation_called(self, function: str, args: tuple, output: object) -> None:
        if not self._stack:  # outside the model's modules
            return
        frame = self._stack[-1]
        if frame.skip:
            return
        frame.body_activation = True
        if frame.leaf:  # an activation module: its output is the layer (recorded when it ends)
            frame.saw_activation = True
            return
        if args and isinstance(args[0], nn.Parameter):
            return  # a gate computed from weights (sigmoid(self.alpha)) has no samples
        site = rules.functional_site(frame.name, function, self._module_names)
        self._record_site(
            frame, site, output, self._last_producer, non_negative=function in rules.NON_NEGATIVE_ACTIVATIONS
        )

    def _other_call(self, func: object, args: tuple, kwargs: dict | None, output: object) -> None:
        """Any other function in the window: an MoE block's weight access, or a weight applied
        functionally (``F.conv1d(x, self.conv.weight)``), which becomes the producer of what follows.
        """
        if not self._stack:
            return
        frame = self._stack[-1]
        if frame.routing is not None:
            frame.routing.observe(func, args, kwargs)
        if frame.skip or frame.leaf:  # a leaf applies its own weight: its hooks decide
            return
        kind = producers.producing_kind(func)
        if kind is None:
            return
        with _compat.DisableTorchFunction():
            if self._owners is None:
                self._owners = {
                    id(p): (name, module) for name, module in self._named for p in module.parameters(False)
                }
            made = producers.functional_producer(kind, args, kwargs or {}, output, self._owners)
        if made is not None and made.module is not frame.module:  # a module's own forward: its hooks decide
            self._last_producer = made  # type: ignore[assignment]
            frame.body_foreign_weight = True  # later calls of this module keep the mode on for it

    def _record_site(
        self,
        frame: Frame,
        site: str,
        output: object,
        producer: nn.Module | None,
        producer_known: bool = False,
        non_negative: bool = False,
    ) -> None:
        """Records an activation call site's output, as an MoE experts layer when inside one."""
        if frame.routing is None:
            self._record(
                site, output, producer=producer, producer_known=producer_known, non_negative=non_negative
            )
            return
        routing = frame.routing
        layer = routing.layer(site)
        routing.calls[(layer, routing.call_key())] += 1
        name = rules.call_site_name(layer, routing.calls[(layer, routing.call_key())], self._module_names)
        self._site_of[name] = layer
        if self._wanted and name not in self._wanted and layer not in self._wanted:
            return
        if not isinstance(output, Tensor) or output.dim() < 2:
            self._record(name, output, producer=producer)  # the usual errors and warnings
            return
        experts = routing.experts_of(output.shape[0])
        if experts is None:
            self._warn_once(
                "routing:" + name,
                f"Layer {name!r} (shape {tuple(output.shape)}) runs inside the experts of "
                f"{routing.group.name!r}, but which expert each row belongs to could not be told from the "
                "weights it used; it is not measured.",
            )
            return
        if name not in self._stats:
            if self._producer_unknown(name, producer_known):
                return
            self._layout[name] = (0, self._decide_node_dim(name, output, producer, 0))
            self._stats[name] = moe.ExpertStatistic(routing.group.num_experts, self.statistic, self.threshold)
            self._first_seen[name] = len(self._first_seen)
        if not self.enabled:
            return
        if self._sample_limit is not None:
            self._warn_once(
                "limit:" + name,
                f"Layer {name!r} sees routed tokens, not samples: the limit on counted samples (a distributed "
                "sampler's padding) is not applied to it.",
            )
        batch_dim, node_dim = self._layout[name]
        with torch.no_grad():
            stat = self._stats[name]
            if not isinstance(stat, moe.ExpertStatistic):
                raise RuntimeError(
                    f"Layer {name!r} was first measured outside the experts of {routing.group.name!r}."
                )
            stat.add(output.detach(), batch_dim, node_dim, self._scratch, experts)

    def _compare_call_counts(self) -> None:
        """Warns about a call site whose number of calls changed between forward passes: its
        ``-call<k>`` names would not mean the same call in every pass.
        """
        if not self._calls:
            return
        current = dict(self._calls)
        if self._previous_calls is not None and current != self._previous_calls:
            for site in rules.changed_call_counts(self._previous_calls, current):
                second = rules.call_site_name(site, 2, self._module_names)
                self._warn_once(
                    "calls:" + site,
                    f"Call site {site!r} ran {self._previous_calls.get(site, 0)} times in one forward pass and "
                    f"{current.get(site, 0)} in another, so its layers {site!r}, {second!r}, ... do not name "
                    "the same call in every pass; name the layers to keep with `layers=[...]`.",
                )
        self._previous_calls = current

    def _record_recurrent(self, name: str, module: nn.Module, output: object) -> None:
        sequence = output[0] if isinstance(output, tuple) else output
        if isinstance(sequence, nn.utils.rnn.PackedSequence):
            sequence = sequence.data  # (tokens, features): every row a time step of some sample
        batch_first = getattr(module, "batch_first", False)
        batch_dim = 0 if batch_first or not isinstance(sequence, Tensor) or sequence.dim() < 3 else 1
        self._record(name, sequence, producer=module, batch_dim=batch_dim, producer_known=True)
