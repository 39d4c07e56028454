"""Per-node activity of a model's layers during a measurement window. Plain PyTorch, no Lightning.

While a window is open (``attach`` .. ``detach``) the tracker sees the module calls of its model
that matter through module hooks and the activation functions called in module code through a
``TorchFunctionMode``; both are removed when the window closes, so training steps outside it run
exactly as without the tracker. A module's first call learns what its code does; after that,
only the modules whose calls the measurement needs stay hooked
(:func:`~emergence_lightning.measure.interception.hook_plan`). What counts as a layer and a node is decided in :mod:`emergence_lightning.measure.layers`;
the frames and the mode are in :mod:`~emergence_lightning.measure.interception`, the per-node
reductions in :mod:`~emergence_lightning.measure.statistics`, the result in
:mod:`~emergence_lightning.measure.measurement`, and ``measure_activity`` (batches through a
model) in :mod:`~emergence_lightning.measure.batches`.

Example (no Trainer needed)::

    with ActivityTracker(model) as tracker:
        for x, _ in loader:
            tracker.start_pass()
            model(x)
    measurement = tracker.compute()
    measurement.names, measurement.n, measurement.a   # layers, nodes and active nodes
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from emergence_lightning import _compat
from emergence_lightning.measure import experts as moe
from emergence_lightning.measure import layers as rules
from emergence_lightning.measure import producers
from emergence_lightning.measure.activity import unit_activities
from emergence_lightning.measure.arguments import (
    NodeDim,
    check_flags,
    check_layer_names,
    check_tracking_arguments,
    migrated_node_dims,
)
from emergence_lightning.measure.compile_guard import EagerWhileMeasuring
from emergence_lightning.measure.interception import (
    ActivationCalls,
    Frame,
    Learned,
    ModuleFacts,
    WindowHook,
    hook_plan,
    inside,
    leave_mode,
    metric_modules,
)
from emergence_lightning.measure.layers import INPUT_LAYER, OUTPUT_LAYER
from emergence_lightning.measure.measurement import LayerActivity, Measurement
from emergence_lightning.measure.reduction import reduce_statistics
from emergence_lightning.measure.statistics import (
    DEFAULT_STATISTIC,
    NodeStatistic,
    Scratch,
)

# A reduction across processes: (tensor, "sum" | "max") -> reduced tensor. Identity on one process.
Reduce = Callable[[Tensor, str], Tensor]


class ActivityTracker:
    """Collects per-node activity of every activation call site of a model.

    Args:
        model: the network (an ``nn.Module``; a LightningModule with no ``forward`` works too:
            any call of its submodules is seen).
        layers: names of the layers to keep (``None``: every activation). A module name keeps
            each call of that module's output (also a non-activation module, e.g. ``"fc1"``);
            a call-site name (``"layer1.0.relu-call2"``, ``"encoder.layers.0.relu-fn"``) keeps that one.
            Names leave out wrappers (``torch.compile``'s ``_orig_mod``, DDP's ``module``, ...).
        threshold: a node is active when its activity exceeds this value (the paper's 0.05); with
            ``statistic="normalized_mean_abs"`` it is ReDo's ``tau``.
        statistic: what a node's activity is, averaged over samples and positions: ``"mean"``
            (the paper's mean output), ``"mean_abs"`` (mean of ``|a|``; equals ``"mean"`` bit for
            bit on outputs that are never negative), ``"normalized_mean_abs"`` (ReDo's dormancy
            score: mean ``|a|`` over the layer's average of it), ``"fraction"`` (fraction of
            samples/positions on which the output exceeds ``threshold``) or ``"max"``. The default
            is :data:`~emergence_lightning.measure.statistics.DEFAULT_STATISTIC`.
        min_firing_rate: with ``statistic="fraction"``, a node is active when it fires on more
            than this fraction of samples/positions.
        node_dim: the dimension indexing nodes, for every layer (an int) or per layer (a mapping
            from layer or module name to int); ``None`` decides it from the producing layer.
            The batch is dim 0 (dim 1 for a recurrent module that is not ``batch_first``).
        include_input: also track the input of the first parametrised leaf module (the data).
        include_output: also track the output of the last parametrised leaf module (the logits).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        threshold: float = 0.05,
        statistic: str = DEFAULT_STATISTIC,
        min_firing_rate: float = 0.5,
        node_dim: NodeDim = None,
        include_input: bool = False,
        include_output: bool = False,
    ) -> None:
        check_tracking_arguments(threshold, statistic, min_firing_rate, node_dim, layers)
        node_dim = migrated_node_dims(node_dim)
        check_flags(include_input=include_input, include_output=include_output)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.threshold = float(threshold)
        self.statistic = statistic
        self.min_firing_rate = float(min_firing_rate)
        self.node_dim = node_dim
        self.include_input, self.include_output = include_input, include_output
        self._wanted = check_layer_names(model, layers)
        if isinstance(node_dim, Mapping):  # a typo would be silently ignored: refuse it as `layers` does
            check_layer_names(
                model, [key for key in node_dim if key not in (INPUT_LAYER, OUTPUT_LAYER)], "node_dim"
            )
        leaves = rules.parametrised_leaves(model)
        if (include_input or include_output) and not leaves:
            raise ValueError(
                "`include_input`/`include_output` need a module with parameters (Linear, Conv, ...); "
                f"{type(model).__name__} has none."
            )
        self._input_module = leaves[0][1] if include_input else None
        self._output_module = leaves[-1][1] if include_output else None
        # An experts layer's statistic splits rows by expert; every other layer's is a NodeStatistic.
        self._stats: dict[str, NodeStatistic | moe.ExpertStatistic] = {}
        self._layout: dict[str, tuple[int, int]] = {}  # layer -> (batch dim, node dim), fixed at first sight
        self._first_seen: dict[str, int] = {}
        self._calls: Counter[str] = Counter()  # call sites seen in this forward pass
        self._stack: list[Frame] = []
        self._tree: dict[int, tuple[str, type]] = {}  # id(module) -> its name (wrappers left out), type
        self._modules: dict[int, ModuleFacts] = {}
        # (id(module), training) -> whether the module's own forward code calls an activation function,
        # and whether it applies another module's weight, learned on its first call (`_enter`); kept
        # while the module tree is unchanged. And who called each module (the frame below its own).
        self._learned: Learned = {}
        self._callers: dict[int, set[int | None]] = {}
        self._named: list[tuple[str, nn.Module]] = []
        # What the hooks were planned for: (train/eval flags, facts learned, producers hooked).
        self._plan: tuple[tuple[bool, ...], int, bool] | None = None
        # Producers are hooked while modules are still being learned, and for the rest of a window
        # in which a layer was seen for the first time without them (`_producer_unknown`).
        self._producers_needed = True
        self._producers_hooked = True
        self._learned_before = -1  # facts learned when the hooks were last planned
        self._flags_before: tuple[bool, ...] = ()  # and the modules' train/eval modes then
        self._attached = False
        self._intercepting = False  # whether the window's mode is on the torch function mode stack
        self._module_names: frozenset[str] = frozenset()
        self._site_names: dict[tuple[str, int], str] = {}  # (site, k) -> the name of its k-th call
        self._site_of: dict[str, str] = {}  # layer name -> its site (a module, or a functional call)
        self._input_name, self._output_name = INPUT_LAYER, OUTPUT_LAYER
        self._last_producer: nn.Module | None = None
        self._producer_shapes: dict[int, torch.Size] = {}  # id(producer) -> its last output's shape
        self._handles: list[RemovableHandle] = []
        self._mode: ActivationCalls | None = None
        self._holds_eager = False
        self._warned: set[str] = set()
        self._scratch = Scratch()
        self._module_calls = 0  # module calls of the model seen in this window
        self.enabled = True
        self._rows_left: dict[str, int | None] = {}
        self._sample_limit: int | None = None
        self._expert_groups: dict[int, tuple[moe.ExpertGroup, str, int | None]] = {}
        # id(parameter) -> its module, found when code first applies a weight functionally in a window.
        self._owners: dict[int, tuple[str, nn.Module]] | None = None
        self._composite: set[int] = set()
        self._previous_calls: dict[str, int] | None = None

    # ---- window --------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Layers in forward order, as far as forward passes have shown them."""
        pinned = {self._input_name: -math.inf, self._output_name: math.inf}
        return sorted(self._stats, key=lambda name: (pinned.get(name, 0), self._first_seen[name]))

    @property
    def attached(self) -> bool:
        return self._attached

    def attach(self) -> ActivityTracker:
        """Opens the window: module hooks and activation interception (idempotent)."""
        if self._attached:
            return self
        if not self._holds_eager:
            self._holds_eager = EagerWhileMeasuring.hold(self)
        named = rules.qualified_modules(self.model)
        tree = {id(module): (name, type(module)) for name, module in named}
        if tree != self._tree:  # the module tree changed (or first window): its facts worked out afresh
            self._tree = tree
            # A wrapper shares its name with the module it wraps, which alone gets a frame (one layer, not two).
            wrappers = {id(module) for (name, module), (inner, _) in zip(named, named[1:]) if name == inner}
            skipped = metric_modules(self.model)
            self._modules = {
                id(module): ModuleFacts(name, module, id(module) in skipped, id(module) in wrappers)
                for name, module in named
            }
            self._composite = rules.composite_candidates(self.model)
            self._learned.clear()  # what a module's code does is learned again for a changed tree
            self._callers.clear()
            self._learned_before = -1
        self._named = named
        if frozenset(name for name, _ in named) != self._module_names:  # new names: call sites named afresh
            self._module_names = frozenset(name for name, _ in named)
            self._site_names.clear()
            self._input_name = rules.unambiguous(INPUT_LAYER, self._module_names)
            self._output_name = rules.unambiguous(OUTPUT_LAYER, self._module_names)
        # Parameters can change under an unchanged tree (pruning's weight_orig): looked up every window.
        self._expert_groups = moe.find_expert_groups(named)
        self._owners = None  # parameters can change under an unchanged tree (pruning's weight_orig)
        self._stack.clear()
        self._mode = ActivationCalls(self._activation_called, self._other_call)
        self._mode.__enter__()
        self._intercepting = True
        self._intercept(False)  # on only while a module's own code that calls activations runs
        self._attached = True
        self._plan = None
        self._producers_needed = False
        self._install_hooks()
        return self

    def _install_hooks(self) -> None:
        """Hooks the modules the measurement needs, for the current train/eval modes and facts learned.

        Planned again between forward passes when a module changed mode or new facts were learned.
        """
        flags = tuple(module.training for _, module in self._named)
        # Still learning (a module's first call ran since the last plan, or modules changed mode):
        # producers stay hooked.
        learning = len(self._learned) != self._learned_before or flags != self._flags_before
        self._learned_before, self._flags_before = len(self._learned), flags
        producers = self._producers_needed or learning
        plan = (flags, len(self._learned), producers)
        if plan == self._plan:
            return
        self._remove_hooks()
        self._plan = plan
        always = {id(self.model)} | set(self._expert_groups) | self._composite
        always |= {id(m) for m in (self._input_module, self._output_module) if m is not None}
        always |= {id(module) for name, module in self._named if name in self._wanted}
        skipped = {key for key, info in self._modules.items() if info.skip}
        subtrees = inside(self._named, set(self._expert_groups) | self._composite | skipped)
        full, leaves = hook_plan(
            self._named, self._modules, self._learned, self._callers, always, subtrees, producers
        )
        starts, ends, leaf_ends = (
            WindowHook(f) for f in (self._module_starts, self._module_ends, self._leaf_ends)
        )
        for module in full:
            self._handles.append(module.register_forward_pre_hook(starts))
            self._handles.append(module.register_forward_hook(ends, always_call=True))
        for module in leaves:
            self._handles.append(module.register_forward_hook(leaf_ends))
        hooked = {id(module) for module in (*full, *leaves)}
        self._producers_hooked = all(  # (a wrapper never gets a frame: its module does)
            id(module) in hooked
            for _, module in self._named
            if self._modules[id(module)].producer and not self._modules[id(module)].wrapper
        )

    def _remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def detach(self) -> None:
        """Closes the window: removes every hook and the interception (idempotent)."""
        self._remove_hooks()
        self._attached = False
        if self._mode is not None:
            if self._intercepting:
                leave_mode(self._mode)
            self._mode = None
            self._intercepting = False
        self._stack.clear()
        self._producer_shapes.clear()
        self._scratch.trim()
        if self._holds_eager:
            self._holds_eager = False
            EagerWhileMeasuring.release(self)

    def __enter__(self) -> ActivityTracker:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def start_pass(self) -> None:
        """Marks the start of one forward pass (one batch): call sites are numbered per pass."""
        self._compare_call_counts()
        self._calls.clear()
        self._stack.clear()
        self._intercept(False)
        if self._attached:
            self._install_hooks()

    def reset(self) -> None:
        """Clears the statistics to start a new measurement window (layers and order are kept)."""
        for stat in self._stats.values():
            stat.reset()
        self._rows_left = {name: self._sample_limit for name in self._stats}
        self._module_calls = 0

    def limit_samples(self, limit: int | None) -> None:
        """Counts at most ``limit`` samples per layer in the next windows (``None``: all).

        A distributed sampler pads the last batches with repeated samples so every process gets
        as many; counting only this process's share of real samples avoids counting them twice.
        """
        self._sample_limit = limit
        self._rows_left = {name: limit for name in self._stats}

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
            if frame.learning:  # who calls it: a caller whose code needs the mode keeps it hooked
                caller = self._stack[-2].module if len(self._stack) > 1 else None
                self._callers.setdefault(id(module), set()).add(None if caller is None else id(caller))
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
                self._record_site(frame, frame.name, output, producer, producer_known=producer is module)
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
                self._record(info.name, output, producer=producer, producer_known=producer is module)
            elif info.producer:
                self._last_producer = module
                if isinstance(output, Tensor):
                    self._producer_shapes[id(module)] = output.shape

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
        self._record_site(frame, site, output, self._last_producer)

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
    ) -> None:
        """Records an activation call site's output, as an MoE experts layer when inside one."""
        if frame.routing is None:
            self._record(site, output, producer=producer, producer_known=producer_known)
            return
        routing = frame.routing
        layer = routing.layer(site)
        routing.calls[(layer, routing.call_key())] += 1
        name = rules.call_site_name(layer, routing.calls[(layer, routing.call_key())], self._module_names)
        self._site_of[name] = layer
        if self._wanted and name not in self._wanted and layer not in self._wanted:
            return
        if not isinstance(output, Tensor) or output.dim() < 2:
            return self._record(name, output, producer=producer)  # the usual errors and warnings
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
        if self._previous_calls is not None:
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

    # ---- accumulation --------------------------------------------------------------------
    def _producer_unknown(self, name: str, producer_known: bool) -> bool:
        """Whether layer ``name``, seen for the first time, must wait for the next pass: producers are
        not hooked (every module was learned), so the one before it is unknown and its node dimension
        cannot be decided. The next pass is planned with producers (for the rest of the window) and
        records it from then on; ``node_dim`` set for it decides at once.
        """
        if producer_known or self._producers_hooked:
            return False
        if rules.node_dim_override(self.node_dim, name, self._site_of.get(name, name)) is not None:
            return False
        self._producers_needed = True
        return True

    def _record(
        self,
        site: str,
        output: object,
        producer: nn.Module | None,
        batch_dim: int = 0,
        once: bool = False,
        producer_known: bool = False,
    ) -> None:
        call = self._calls[site] = self._calls[site] + 1
        if once and call > 1:
            return
        name = self._site_names.get((site, call))
        if name is None:
            name = self._site_names[site, call] = rules.call_site_name(site, call, self._module_names)
            self._site_of[name] = site
        if self._wanted and name not in self._wanted and site not in self._wanted:
            return
        if type(output) is not Tensor and not isinstance(output, Tensor):
            raise TypeError(
                f"Layer {name!r} produced {type(output).__name__}, not a tensor; name a module whose output "
                "is a tensor in `layers=[...]`."
            )
        if output.is_nested:
            self._warn_once(name, f"Layer {name!r} produced a nested tensor; it is not measured.")
            return
        if output.dim() < 2:
            self._warn_once(
                name,
                f"Layer {name!r} produced a tensor of shape {tuple(output.shape)}, which has no (batch, "
                "nodes) dimensions; it is not measured.",
            )
            return
        stat = self._stats.get(name)
        if stat is None:
            if self._producer_unknown(name, producer_known or batch_dim != 0):
                return
            self._layout[name] = (batch_dim, self._decide_node_dim(name, output, producer, batch_dim))
            stat = self._stats[name] = NodeStatistic(self.statistic, self.threshold)
            self._first_seen[name] = len(self._first_seen)
            self._rows_left[name] = self._sample_limit
        if not self.enabled:
            return
        batch_dim, node_dim = self._layout[name]
        if node_dim >= output.dim():
            raise ValueError(
                f"Layer {name!r} produced shape {tuple(output.shape)}, but its nodes were on dim {node_dim} "
                "in earlier batches; set `node_dim` for this layer."
            )
        if output.requires_grad:  # a training pass: keep the statistic out of the autograd graph
            output = output.detach()
        rows_left = self._rows_left.get(name)
        if rows_left is not None:
            output = output.narrow(batch_dim, 0, min(rows_left, output.shape[batch_dim]))
            self._rows_left[name] = rows_left - output.shape[batch_dim]
            if output.shape[batch_dim] == 0:
                return
        try:
            # A name is an experts layer or not for the whole window (routing decides it at first sight).
            cast(NodeStatistic, stat).add(output, batch_dim, node_dim, self._scratch)
        except ValueError as error:
            raise ValueError(
                f"Layer {name!r} changed its number of nodes between batches ({error}); set `node_dim` to "
                "the dimension that indexes nodes."
            ) from None

    def _decide_node_dim(self, name: str, output: Tensor, producer: nn.Module | None, batch_dim: int) -> int:
        reads_data = name == self._input_name and self._input_module is not None
        produced = self._producer_shapes.get(id(producer)) if producer is not None else None
        decided, warning = rules.decide_node_dim(
            name,
            tuple(output.shape),
            batch_dim,
            rules.node_dim_override(self.node_dim, name, self._site_of.get(name, name)),
            producer,
            tuple(produced) if produced else None,
            self._input_module if reads_data else None,
        )
        if warning is not None:
            self._warn_once(name, warning)
        return decided

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # ---- result --------------------------------------------------------------------------
    def compute(self, reduce: Reduce | None = None) -> Measurement | None:
        """Turns the window's statistics into active/dead nodes per layer.

        Args:
            reduce: combines a tensor across processes (``"sum"`` or ``"max"``); every process
                must call ``compute`` with it. ``None`` on a single process.

        Returns:
            The measurement, or ``None`` when no samples were seen by any process.
        """
        self._compare_call_counts()  # the window's last pass
        names = self.layer_names
        # An MoE layer is one unit per expert until the end (each expert has its own row count).
        unit_names, stats, expert_index = moe.expand(names, self._stats)
        rows, totals, probes, sizes_list = reduce_statistics(stats, names, self.statistic, reduce)

        if not stats or float(rows.max()) == 0:
            if self._module_calls and not stats:
                raise ValueError(
                    f"{type(self.model).__name__} ran, but no activation was found in its forward pass (no "
                    "activation module, functional activation or recurrent module). Name the modules whose "
                    "outputs are the layers: `layers=['encoder.0', ...]`."
                )
            return None
        seen = {name for name, r in zip(unit_names, rows.tolist()) if r > 0}
        missing = [name for name in names if name not in seen]
        unmatched = [
            name for name in self._wanted if not any(self._site_of.get(n) == name or n == name for n in names)
        ]
        if unmatched:
            raise RuntimeError(
                f"`layers` names {unmatched}, which never produced an output during the measurement; name "
                f"modules or call sites used in the forward pass. Layers seen: {names[:12]}."
            )

        # Every unit's activity, active nodes and counts in one pass (measure/activity.py); a unit that
        # saw no row is kept only as an idle expert of a layer that ran.
        cut = self.min_firing_rate if self.statistic == "fraction" else self.threshold
        units = unit_activities(self.statistic, cut, totals, probes, rows, sizes_list)
        layers, kept_experts, idle, unit_counts = [], [], [], []
        for unit, (name, size, row_count, expert) in enumerate(
            zip(unit_names, sizes_list, rows.tolist(), expert_index)
        ):
            if row_count == 0 and (expert is None or name in missing):
                continue
            kept_experts.append(expert)
            idle.append(row_count == 0)
            unit_counts.append(units.active_counts[unit])
            if row_count == 0:  # an expert that got no token: no activity, not "dead" by a measured value
                layers.append(LayerActivity(name, *moe.idle_activity(size), 0))
                continue
            bad_count = units.nonfinite[unit]
            if bad_count:
                self._warn_once(
                    "nonfinite:" + name,
                    f"Layer {name!r}: {bad_count} of {size} nodes produced NaN or inf; they are counted as inactive.",
                )
            layers.append(LayerActivity(name, units.activity[unit], units.active[unit], bad_count))
        layers = moe.merge(layers, kept_experts, idle)
        if missing:
            self._warn_once(
                "missing:" + ",".join(missing),
                f"Layers {missing} ran in earlier measurements but not in this one; this measurement leaves them out.",
            )
        # An experts layer's count is the sum of its experts' (merge joined them in order).
        counts, start = [], 0
        for layer in layers:
            counts.append(sum(unit_counts[start : start + (layer.experts or 1)]))
            start += layer.experts or 1
        return Measurement(layers, samples=int(rows.max()), active_counts=counts)
