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

from emergence_lightning.measure import experts as moe
from emergence_lightning.measure import layers as rules
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
    LeafShortcut,
    Learned,
    ModuleFacts,
    leave_mode,
    metric_modules,
)
from emergence_lightning.measure.layers import INPUT_LAYER, OUTPUT_LAYER
from emergence_lightning.measure.measurement import LayerActivity, Measurement
from emergence_lightning.measure.module_calls import ModuleCalls
from emergence_lightning.measure.reduction import reduce_statistics
from emergence_lightning.measure.statistics import (
    DEFAULT_STATISTIC,
    LayoutStep,
    NodeStatistic,
    Scratch,
)

# A reduction across processes: (tensor, "sum" | "max") -> reduced tensor. Identity on one process.
Reduce = Callable[[Tensor, str], Tensor]


class ActivityTracker(ModuleCalls):
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
        self._module_list: list[nn.Module] = []
        # What the hooks were planned for: (train/eval flags, facts learned, producers hooked, callers seen).
        self._plan: tuple[tuple[bool, ...], int, bool, int] | None = None
        self._callers_seen = 0  # (module, caller) pairs seen: a new one plans the hooks again
        self._planned: tuple[object, list[nn.Module], list[nn.Module], bool] | None = (
            None  # the last plan made
        )
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
        self._expert_candidates: list[tuple[str, nn.Module]] = []  # per module tree (experts.py)
        self._previous_calls: dict[str, int] | None = None
        # id(activation leaf) -> what its last output passed through, kept while the module tree is
        # unchanged (`_leaf_ends`).
        self._shortcuts: dict[int, LeafShortcut] = {}

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
            self._expert_candidates = moe.expert_candidates(named)
            self._learned.clear()  # what a module's code does is learned again for a changed tree
            self._shortcuts.clear()
            self._callers.clear()
            self._learned_before = -1
            names = frozenset(name for name, _ in named)  # (the tree holds the names)
            if names != self._module_names:  # new names: call sites named afresh
                self._module_names = names
                self._site_names.clear()
                self._input_name = rules.unambiguous(INPUT_LAYER, self._module_names)
                self._output_name = rules.unambiguous(OUTPUT_LAYER, self._module_names)
        self._named, self._module_list = named, [module for _, module in named]
        # Parameters can change under an unchanged tree (pruning's weight_orig): looked up every window.
        self._expert_groups = moe.find_expert_groups(self._expert_candidates)
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
        non_negative: bool = False,
    ) -> LayoutStep | None:
        """Adds an output of call site ``site`` to its layer's statistic. Returns the step that added it
        when the site's next output of that layout in a later pass may skip these checks (its first
        call in the pass, no sample limit: :meth:`_leaf_ends`'s shortcut).
        """
        call = self._calls[site] = self._calls[site] + 1
        if once and call > 1:
            return None
        name = self._site_names.get((site, call))
        if name is None:
            name = self._site_names[site, call] = rules.call_site_name(site, call, self._module_names)
            self._site_of[name] = site
        if self._wanted and name not in self._wanted and site not in self._wanted:
            return None
        if type(output) is not Tensor and not isinstance(output, Tensor):
            raise TypeError(
                f"Layer {name!r} produced {type(output).__name__}, not a tensor; name a module whose output "
                "is a tensor in `layers=[...]`."
            )
        if output.is_nested:
            self._warn_once(name, f"Layer {name!r} produced a nested tensor; it is not measured.")
            return None
        if output.dim() < 2:
            self._warn_once(
                name,
                f"Layer {name!r} produced a tensor of shape {tuple(output.shape)}, which has no (batch, "
                "nodes) dimensions; it is not measured.",
            )
            return None
        stat = self._stats.get(name)
        if stat is None:
            if self._producer_unknown(name, producer_known or batch_dim != 0):
                return None
            self._layout[name] = (batch_dim, self._decide_node_dim(name, output, producer, batch_dim))
            stat = self._stats[name] = NodeStatistic(self.statistic, self.threshold)
            self._first_seen[name] = len(self._first_seen)
            self._rows_left[name] = self._sample_limit
        if not self.enabled:
            return None
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
                return None
        try:
            # A name is an experts layer or not for the whole window (routing decides it at first sight).
            step = cast(NodeStatistic, stat).add(output, batch_dim, node_dim, self._scratch, non_negative)
        except ValueError as error:
            raise ValueError(
                f"Layer {name!r} changed its number of nodes between batches ({error}); set `node_dim` to "
                "the dimension that indexes nodes."
            ) from None
        return step if call == 1 and rows_left is None else None

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
