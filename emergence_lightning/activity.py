"""Per-node activity of a model's layers, gathered with forward hooks. Plain PyTorch, no Lightning.

A *layer* is the output of a tracked module (by default every activation module); a *node* is a
feature of a 2-D output ``(batch, features)`` or a channel (dim 1) of a ``(batch, channels, ...)``
output. Hooks reduce each output to one running value per node on the model's device at once, so
no activation is kept alive and no step waits for the host.

Example (no Trainer needed)::

    with ActivityTracker(model) as tracker:
        for x, _ in loader:
            model(x)
    measurement = tracker.compute()
    measurement.n, measurement.a   # nodes and active nodes per layer
"""

from __future__ import annotations

import math
import sys
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

STATISTICS = ("mean", "fraction", "max")

# Activation modules tracked by default. Softmax/LogSoftmax are left out: they normalise logits.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.PReLU,
    nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.GLU,
)  # fmt: skip

INPUT_LAYER = "<input>"
OUTPUT_LAYER = "<output>"

# A reduction across processes: (tensor, "sum" | "max") -> reduced tensor. Identity on one process.
Reduce = Callable[[Tensor, str], Tensor]


class SharedModuleError(RuntimeError):
    """A tracked module ran twice in one forward pass, so its two uses would merge into one layer."""


@dataclass
class LayerActivity:
    """One layer's nodes after a measurement window."""

    name: str
    activity: Tensor  # per-node statistic (float64, CPU); NaN where the node saw a non-finite value
    active: Tensor  # bool per node
    nonfinite_nodes: int  # nodes that produced NaN or inf at least once (counted as inactive)

    @property
    def n(self) -> int:
        return int(self.activity.numel())

    @property
    def a(self) -> int:
        return int(self.active.sum())


@dataclass
class Measurement:
    """Every tracked layer in forward order, and how many samples (rows) each layer saw."""

    layers: list[LayerActivity]
    samples: int
    names: list[str] = field(init=False)
    n: list[int] = field(init=False)
    a: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.names = [layer.name for layer in self.layers]
        self.n = [layer.n for layer in self.layers]
        self.a = [layer.a for layer in self.layers]

    @property
    def active_fraction(self) -> float:
        total = sum(self.n)
        return sum(self.a) / total if total else math.nan


class _NodeStatistic:
    """Running per-node statistic of one layer; all tensors stay on the layer's device."""

    def __init__(self) -> None:
        self.total: Tensor | None = None  # sum (mean), count above threshold (fraction), or max
        # Plain per-node sum of the outputs: NaN/inf propagate into it, which is how non-finite
        # nodes are found without an extra pass. For the mean it is `total` itself.
        self.probe: Tensor | None = None
        self.rows = 0  # samples x positions reduced into each node (a Python int: no sync)

    def reset(self) -> None:
        self.total = self.probe = None
        self.rows = 0


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps sums over millions of positions exact enough; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class ActivityTracker:
    """Collects per-node activity of a model's layers through forward hooks.

    Args:
        model: the network. Layers are found among its submodules.
        layers: qualified module names whose outputs are the layers (as in
            ``model.named_modules()``); ``None`` tracks every activation module.
        threshold: a node is active when its activity exceeds this value (the paper's 0.05).
        statistic: ``"mean"`` (mean output per node over samples and positions), ``"fraction"``
            (fraction of samples/positions on which the output exceeds ``threshold``) or ``"max"``.
        min_firing_rate: with ``statistic="fraction"``, a node is active when it fires on more
            than this fraction of samples/positions.
        node_dim: dimension that indexes nodes; ``None`` means the last for 2-D outputs and 1 for
            ``(batch, channels, ...)`` outputs. The batch is always dim 0.
        include_input: also track the input of the first parametrised leaf module (the data).
        include_output: also track the output of the last parametrised leaf module (the logits).

    Layers are ordered by when they first run in a forward pass, so the order follows the
    computation rather than the order modules were defined in.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        threshold: float = 0.05,
        statistic: str = "mean",
        min_firing_rate: float = 0.5,
        node_dim: int | None = None,
        include_input: bool = False,
        include_output: bool = False,
    ) -> None:
        check_tracking_arguments(threshold, statistic, min_firing_rate, node_dim, layers)
        check_flags(include_input=include_input, include_output=include_output)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.threshold = float(threshold)
        self.statistic = statistic
        self.min_firing_rate = float(min_firing_rate)
        self.node_dim = node_dim
        self._targets = resolve_layers(model, layers, include_input, include_output)
        self._stats = {name: _NodeStatistic() for name, _, _ in self._targets}
        self._first_seen: dict[str, int] = {}  # name -> order of its first call ever
        self._calls_this_pass: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []
        self._holds_eager = False  # compiled code runs eagerly while attached (see `_EagerWhileMeasuring`)
        self._nonfinite_warned: set[str] = set()
        self.enabled = True
        # Samples this process may still count; None = no limit (see `limit_samples`).
        self._rows_left: dict[str, int | None] = {}
        self._sample_limit: int | None = None

    # ---- hooks ---------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Tracked layer names in forward order (definition order until the first forward)."""
        position = {name: i for i, (name, _, _) in enumerate(self._targets)}
        # The data stays first and the logits last, whatever runs in between.
        pinned = {INPUT_LAYER: -math.inf, OUTPUT_LAYER: math.inf}
        return sorted(
            position,
            key=lambda name: (pinned.get(name, 0), self._first_seen.get(name, math.inf), position[name]),
        )

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> ActivityTracker:
        """Registers the hooks (idempotent)."""
        if self._handles:
            return self
        if not self._holds_eager:
            # Before any hook: an error leaves nothing behind.
            self._holds_eager = _EagerWhileMeasuring.hold(self)
        # A pass starts with each call of the root module, so reuse is detected per forward.
        def pass_starts(module: nn.Module, args: tuple) -> None:
            if module is self.model:
                self.start_pass()

        self._handles.append(self.model.register_forward_pre_hook(pass_starts))
        for name, module, kind in self._targets:
            if kind == "input":
                hook = self._make_input_hook(name, module)
                self._handles.append(module.register_forward_pre_hook(hook))
            else:
                self._handles.append(module.register_forward_hook(self._make_output_hook(name, module)))
        return self

    def detach(self) -> None:
        """Removes every hook this tracker registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        if self._holds_eager:
            self._holds_eager = False
            _EagerWhileMeasuring.release(self)

    def __enter__(self) -> ActivityTracker:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    # A deepcopy of the model made while hooks are attached (an EMA copy, a branch) carries the
    # hooks along; they must ignore the copy, so each hook checks it runs on its own module.
    def _make_output_hook(self, name: str, target: nn.Module) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if module is target:
                self._observe(name, output)

        return hook

    def _make_input_hook(self, name: str, target: nn.Module) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if module is target:
                self._observe(name, args[0] if args else None)

        return hook

    # ---- accumulation --------------------------------------------------------------------
    def start_pass(self) -> None:
        """Marks the start of one forward pass; a module seen twice within a pass is an error."""
        self._calls_this_pass.clear()

    def reset(self) -> None:
        """Clears the statistics to start a new measurement window (layer order is kept)."""
        for stat in self._stats.values():
            stat.reset()
        self._rows_left = {name: self._sample_limit for name in self._stats}

    def limit_samples(self, limit: int | None) -> None:
        """Counts at most ``limit`` samples per layer in the next windows (``None``: all).

        A distributed sampler pads the last batches with repeated samples so every process gets
        as many; counting only this process's share of real samples avoids counting them twice.
        """
        self._sample_limit = limit
        self._rows_left = {name: limit for name in self._stats}

    def _observe(self, name: str, output: object) -> None:
        calls = self._calls_this_pass.get(name, 0) + 1
        self._calls_this_pass[name] = calls
        if calls == 2:
            raise SharedModuleError(
                f"Module {name!r} ran twice in one forward pass, so its two uses would be merged into one "
                "layer. Give each use its own module instance (e.g. `self.relu1`, `self.relu2`), or leave "
                "this module out by passing explicit `layers=[...]`."
            )
        self._first_seen.setdefault(name, len(self._first_seen))
        if not self.enabled:
            return
        if not isinstance(output, Tensor):
            raise TypeError(
                f"Layer {name!r} produced {type(output).__name__}, not a tensor; name a module whose output "
                "is a tensor in `layers=[...]`."
            )
        with torch.no_grad():
            self._accumulate(name, output.detach())

    def _accumulate(self, name: str, output: Tensor) -> None:
        if output.dim() < 2:
            raise ValueError(
                f"Layer {name!r} produced a tensor of shape {tuple(output.shape)}; expected (batch, nodes, ...)."
            )
        rows_left = self._rows_left.get(name)
        if rows_left is not None:
            output = output[:rows_left]
            self._rows_left[name] = rows_left - output.shape[0]
            if output.shape[0] == 0:
                return
        node_dim = self.node_dim if self.node_dim is not None else (1 if output.dim() > 2 else -1)
        if not -output.dim() <= node_dim < output.dim():
            raise ValueError(
                f"`node_dim`={node_dim} is out of range for layer {name!r}, whose output has shape "
                f"{tuple(output.shape)}; pick one of its dimensions 1..{output.dim() - 1}."
            )
        node_dim = node_dim % output.dim()
        if node_dim == 0:
            raise ValueError(
                f"`node_dim`={self.node_dim} is the batch dimension 0 for layer {name!r}, whose output has "
                f"shape {tuple(output.shape)}; pick one of its dimensions 1..{output.dim() - 1}."
            )
        reduce_dims = [d for d in range(output.dim()) if d != node_dim]
        dtype = _accumulation_dtype(output.device)
        probe = output.sum(reduce_dims, dtype=dtype)
        if self.statistic == "mean":
            part = probe
        elif self.statistic == "fraction":
            part = (output > self.threshold).sum(reduce_dims, dtype=dtype)
        else:
            part = output.amax(reduce_dims).to(dtype)

        stat = self._stats[name]
        if stat.total is None or stat.probe is None:
            stat.total, stat.probe = part, probe
        else:
            if stat.total.shape != part.shape:
                raise ValueError(
                    f"Layer {name!r} changed its number of nodes from {stat.total.numel()} to {part.numel()} "
                    "between batches; set `node_dim` to the dimension that indexes nodes."
                )
            stat.total = torch.maximum(stat.total, part) if self.statistic == "max" else stat.total + part
            if self.statistic != "mean":
                stat.probe = stat.probe + probe
        stat.rows += output.numel() // part.numel()

    # ---- result --------------------------------------------------------------------------
    def compute(self, reduce: Reduce | None = None) -> Measurement | None:
        """Turns the window's statistics into active/dead nodes per layer.

        Args:
            reduce: combines a tensor across processes (``"sum"`` or ``"max"``); every process
                must call ``compute`` with it. ``None`` on a single process.

        Returns:
            The measurement, or ``None`` when no samples were seen by any process.
        """
        names = self.layer_names
        stats = [self._stats[name] for name in names]
        device = next((s.total.device for s in stats if s.total is not None), torch.device("cpu"))
        dtype = _accumulation_dtype(device)
        # Node counts must agree everywhere to pack tensors; a process that saw nothing reports 0.
        sizes = torch.tensor([0 if s.total is None else s.total.numel() for s in stats], device=device)
        if reduce is not None:
            sizes = reduce(sizes, "max")
        sizes_list = [int(v) for v in sizes.tolist()]

        def packed(values: list[Tensor | None], fill: float) -> Tensor:
            filled = [
                torch.full((size,), fill, device=device, dtype=dtype) if v is None else v
                for v, size in zip(values, sizes_list)
            ]
            return torch.cat(filled) if filled else torch.zeros(0, device=device, dtype=dtype)

        rows = torch.tensor([float(s.rows) for s in stats], device=device, dtype=dtype)
        totals = packed([s.total for s in stats], -math.inf if self.statistic == "max" else 0.0)
        # One collective for everything that adds up, one more for a max statistic.
        if self.statistic == "mean":
            summed_parts = [rows, totals]
        else:
            probes = packed([s.probe for s in stats], 0.0)
            summed_parts = [rows, probes, totals] if self.statistic == "fraction" else [rows, probes]
        summed = torch.cat(summed_parts)
        if reduce is not None:
            summed = reduce(summed, "sum")
            if self.statistic == "max":
                totals = reduce(totals, "max")
        split = torch.split(summed.cpu(), [part.numel() for part in summed_parts])
        rows = split[0]
        totals = (totals if self.statistic == "max" else split[-1]).cpu()
        probes = totals if self.statistic == "mean" else split[1]

        if not stats or float(rows.max()) == 0:
            return None
        never_ran = [name for name, r in zip(names, rows.tolist()) if r == 0]
        if never_ran:
            raise RuntimeError(
                f"Tracked layers {never_ran} never ran during the measurement; name only modules used in the "
                "forward pass in `layers=[...]`."
            )

        layers = []
        offset = 0
        for name, size, row_count in zip(names, sizes_list, rows.tolist()):
            total = totals[offset : offset + size]
            bad = ~torch.isfinite(probes[offset : offset + size])
            offset += size
            activity = total if self.statistic == "max" else total / row_count
            activity = torch.where(bad, torch.full_like(activity, math.nan), activity)
            if self.statistic == "fraction":
                active = activity > self.min_firing_rate
            else:
                active = activity > self.threshold
            bad_count = int(bad.sum())
            if bad_count and name not in self._nonfinite_warned:
                self._nonfinite_warned.add(name)
                warnings.warn(
                    f"Layer {name!r}: {bad_count} of {size} nodes produced NaN or inf; they are counted as "
                    "inactive.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            layers.append(LayerActivity(name, activity, active, bad_count))
        return Measurement(layers, samples=int(rows.max()))


def check_tracking_arguments(
    threshold: float,
    statistic: str,
    min_firing_rate: float,
    node_dim: int | None,
    layers: Sequence[str] | None,
) -> None:
    """Raises a clear error for a bad tracking argument (shared by the tracker and the callback)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"`threshold` must be a number, got {threshold!r}.")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"`threshold` must be a finite number >= 0, got {threshold!r}.")
    if statistic not in STATISTICS:
        raise ValueError(f"`statistic` must be one of {STATISTICS}, got {statistic!r}.")
    if isinstance(min_firing_rate, bool) or not isinstance(min_firing_rate, (int, float)):
        raise TypeError(f"`min_firing_rate` must be a number, got {min_firing_rate!r}.")
    if not 0 <= min_firing_rate < 1:
        raise ValueError(f"`min_firing_rate` must be in [0, 1), got {min_firing_rate!r}.")
    if node_dim is not None and (isinstance(node_dim, bool) or not isinstance(node_dim, int)):
        raise TypeError(f"`node_dim` must be an int or None, got {node_dim!r}.")
    if node_dim == 0:
        raise ValueError("`node_dim` cannot be 0, the batch dimension, got 0.")
    if layers is not None:
        if (
            isinstance(layers, str)
            or not isinstance(layers, Collection)
            or not all(isinstance(name, str) for name in layers)
        ):
            raise TypeError(f"`layers` must be a sequence of module names (str), got {layers!r}.")
        if len(layers) == 0:
            raise ValueError("`layers` must name at least one module, got an empty sequence.")
        if len(set(layers)) != len(layers):
            raise ValueError(f"`layers` names a module twice: {list(layers)!r}.")


def check_flags(**flags: object) -> None:
    """Raises a TypeError for a switch that is not True or False (``"no"`` would read as True)."""
    for name, value in flags.items():
        if value not in (True, False):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def compiled_modules(model: nn.Module) -> list[str]:
    """Qualified names of the parts of ``model`` that ``torch.compile`` wraps (``""``: the model itself).

    All forms count: ``torch.compile(module)`` (an ``OptimizedModule`` around ``_orig_mod``),
    ``module.compile()`` in place, and compiled methods set on a module (``self.forward =
    torch.compile(self.forward)``; ``Trainer.fit(torch.compile(model))`` does this to ``forward``
    and the ``*_step`` methods of the LightningModule).
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    optimized = getattr(eval_frame, "OptimizedModule", ())

    def compiled(module: nn.Module) -> bool:
        if isinstance(module, optimized) or getattr(module, "_compiled_call_impl", None) is not None:
            return True
        # Compiled methods set on the instance, or decorated with @torch.compile in the class body.
        namespaces = [vars(module), *(vars(cls) for cls in type(module).__mro__)]
        return any(
            callable(value) and hasattr(value, "_torchdynamo_orig_callable")
            for namespace in namespaces
            for value in namespace.values()
        )

    return [name for name, module in model.named_modules() if compiled(module)]


class _EagerWhileMeasuring:
    """Runs ``torch.compile``'d code eagerly while any tracker is attached.

    Dynamo does not guard compiled code on the forward hooks of submodules
    (``torch._dynamo.config.skip_nnmodule_hook_guards``): code compiled before the hooks were
    added runs on without calling them, so the tracker would see some batches, or none, without an
    error. The ``force_eager`` stance runs the original modules, hooks and all, and compiled code
    resumes once the last tracker detaches. It is held for every tracker, not only for models found
    compiled, since compiled code can hide where no module shows it (a compiled function called
    in ``forward``); on code that was never compiled it changes nothing. The holders are a weak set
    of trackers: a copy of an attached tracker cannot release the original's hold, and one dropped
    while attached stops counting (the stance then ends with the next tracker's detach).
    """

    holders: weakref.WeakSet[ActivityTracker] = weakref.WeakSet()
    stance: object = None

    @classmethod
    def hold(cls, tracker: ActivityTracker) -> bool:
        """Enters the eager stance for ``tracker``; whether it is held (False on torch < 2.6)."""
        set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
        if set_stance is None:
            compiled = compiled_modules(tracker.model)  # without the stance, only these can be refused
            if compiled:
                raise RuntimeError(
                    f"Modules {compiled} are compiled with torch.compile, whose compiled code skips forward "
                    "hooks added after compilation; measuring them needs torch >= 2.6 "
                    f"(`torch.compiler.set_stance`), found torch {torch.__version__}. Upgrade torch, or measure "
                    "the uncompiled module (`compiled._orig_mod`, or no `module.compile()`)."
                )
            return False
        if cls.stance is None:
            cls.stance = set_stance("force_eager")
        cls.holders.add(tracker)
        return True

    @classmethod
    def release(cls, tracker: ActivityTracker) -> None:
        cls.holders.discard(tracker)
        if not cls.holders and cls.stance is not None:
            cls.stance.__exit__(None, None, None)  # type: ignore[attr-defined]  # the stance before `hold`
            cls.stance = None


def parametrised_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own parameters, in definition order: where the input and logits are read."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if not list(module.children()) and any(True for _ in module.parameters(recurse=False))
    ]


def find_activation_modules(model: nn.Module) -> list[str]:
    """Qualified names of the activation modules of ``model``, in definition order."""
    return [name for name, module in model.named_modules() if name and isinstance(module, ACTIVATION_TYPES)]


def resolve_layers(
    model: nn.Module,
    layers: Sequence[str] | None,
    include_input: bool = False,
    include_output: bool = False,
) -> list[tuple[str, nn.Module, str]]:
    """(name, module, "input" | "output") for every layer to track; raises if there is none."""
    modules = dict(model.named_modules())
    if layers is None:
        names = find_activation_modules(model)
        if not names and not (include_input or include_output):
            raise ValueError(
                f"{type(model).__name__} has no activation module to track (ReLU, GELU, Tanh, ...). If it "
                "calls activations functionally (e.g. `torch.relu(x)`), wrap them in modules or pass the "
                "names of the modules whose outputs are the layers: `layers=['encoder.0', ...]`."
            )
    else:
        unknown = [name for name in layers if name not in modules or name == ""]
        if unknown:
            valid = [name for name in modules if name][:12]
            raise ValueError(f"`layers` names modules that don't exist: {unknown}. Some valid names: {valid}.")
        names = list(layers)
    targets = [(name, modules[name], "output") for name in names]
    leaves = parametrised_leaves(model)
    if (include_input or include_output) and not leaves:
        raise ValueError(
            "`include_input`/`include_output` need a module with parameters (Linear, Conv, ...); "
            f"{type(model).__name__} has none."
        )
    if include_input:
        targets.insert(0, (INPUT_LAYER, leaves[0][1], "input"))
    if include_output:
        targets.append((OUTPUT_LAYER, leaves[-1][1], "output"))
    return targets


def measure(
    model: nn.Module,
    batches: Iterable[Tensor],
    **tracker_kwargs: object,
) -> Measurement | None:
    """Runs ``model`` on ``batches`` in eval mode without gradients and measures it.

    The model's train/eval mode is restored afterwards. Keyword arguments go to
    :class:`ActivityTracker`.
    """
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(
            f"`batches` must be an iterable of model inputs (a DataLoader of tensors, or `[x]` for one batch), "
            f"got {type(batches).__name__}."
        )
    tracker = ActivityTracker(model, **tracker_kwargs)  # type: ignore[arg-type]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with tracker, torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for module, training in modes.items():
            module.training = training
    return tracker.compute()
