"""Mixture-of-experts blocks: each expert's hidden unit is a node with a stable identity.

Plain PyTorch, no Lightning. An MoE block sends each token to its top-k experts. Two layouts:

- *fused*: one module holds every expert's weights as ``(num_experts, ...)`` parameters and has
  an int ``num_experts`` (transformers' ``MixtralExperts``, ``Qwen2MoeExperts``,
  ``Qwen3MoeExperts`` and the other models sharing that module). Its activation runs once per
  expert that got tokens (``experts_implementation="eager"``: ``act_fn(gate)`` on the rows of
  expert ``e``, after ``gate_up_proj[e]``), or once on every routed row (``"grouped_mm"``, the
  default: rows sorted by expert, group sizes in ``offs``; ``"batched_mm"``: rows in routing order,
  weights gathered as ``gate_up_proj[expert_ids]``). :class:`Routing` watches those weight
  accesses to tell which expert each row belongs to;
- *a list*: an ``nn.ModuleList``/``nn.ModuleDict`` whose name contains ``expert``, of at least
  two modules of one type and one set of parameter shapes (a plain-PyTorch top-k MoE that calls
  ``self.experts[e](x[rows])``). The module that runs tells the expert.

Either way the experts of a block form **one layer** of ``num_experts x width`` nodes (expert-major:
node ``e * width + j`` is unit ``j`` of expert ``e``), named for the site inside one expert with the
expert's index left out: ``model.layers.0.mlp.experts.act_fn`` for a fused module, and
``moe.experts.each.act`` for the ``act`` of every member of the list ``moe.experts`` (``each`` in
place of the index, so that ``experts.each.1``, the second module of a ``Sequential`` expert, does
not read as expert 1). The experts
are alternatives at one depth of the network, so in the layered formula they are one layer, not
``num_experts`` layers in a row. A unit's activity is averaged over the rows routed to its expert
only. An expert that got no row in a window has no activity: its units are NaN, counted inactive,
listed in ``LayerActivity.idle_experts`` and warned about.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from emergence_lightning import _compat
from emergence_lightning.measure.statistics import NodeStatistic, Scratch

if TYPE_CHECKING:  # the tracker imports this module; its record type is needed for annotations only
    from emergence_lightning.measure.tracker import LayerActivity


@dataclass(frozen=True)
class ExpertGroup:
    """The experts of one MoE block."""

    name: str  # the fused module's or the expert list's qualified name
    num_experts: int
    weights: frozenset[int]  # fused: ids of the (num_experts, ...) parameters; a list: empty


def find_expert_groups(
    named: Iterable[tuple[str, nn.Module]],
) -> dict[int, tuple[ExpertGroup, str, int | None]]:
    """``id(module)`` -> (its group, its name, its expert index) for fused modules (index None) and
    the members of expert lists, among ``named`` (a model's modules with their names).
    """
    found: dict[int, tuple[ExpertGroup, str, int | None]] = {}
    for name, module in named:
        count = _expert_count(module)
        if isinstance(count, int) and count >= 2:
            weights = frozenset(
                id(p) for p in module.parameters(recurse=False) if p.dim() >= 3 and p.shape[0] == count
            )
            if weights:
                found[id(module)] = (ExpertGroup(name, count, weights), name, None)
                continue
        if _expert_list(name, module):
            members = list(module.named_children())
            if len(members) >= 2 and _alike([member for _, member in members]):
                group = ExpertGroup(name, len(members), frozenset())
                for index, (key, member) in enumerate(members):
                    found[id(member)] = (group, f"{name}.{key}" if name else key, index)
    return found


def expert_candidates(named: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The modules among ``named`` that :func:`find_expert_groups` can find a group in (two or more
    ``num_experts``, or an expert list), the same for an unchanged module tree: only their parameters
    need looking at again in a later window (pruning replaces them).
    """
    return [
        (name, module)
        for name, module in named
        if (isinstance(count := _expert_count(module), int) and count >= 2) or _expert_list(name, module)
    ]


def _expert_list(name: str, module: nn.Module) -> bool:
    """A ModuleList or ModuleDict named like ``experts``: its members may be one MoE block's experts."""
    return isinstance(module, nn.ModuleList | nn.ModuleDict) and "expert" in name.rpartition(".")[2].lower()


def _expert_count(module: nn.Module) -> object:
    """``module.num_experts`` if it has one: an attribute of the instance or of its class (a property
    too), looked up without ``nn.Module.__getattr__``'s exception for every module that has none.
    """
    count = vars(module).get("num_experts")
    if count is None and getattr(type(module), "num_experts", None) is not None:
        count = getattr(module, "num_experts", None)
    return count


def _alike(modules: Sequence[nn.Module]) -> bool:
    def shapes(module: nn.Module) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in module.parameters()]

    first = modules[0]
    return all(type(m) is type(first) and shapes(m) == shapes(first) for m in modules[1:])


class Routing:
    """Which expert the rows of an activation belong to, during one call of an experts module."""

    def __init__(self, group: ExpertGroup, prefix: str, expert: int | None) -> None:
        self.group, self.prefix = group, prefix
        self.expert = expert  # every row of the next activation belongs to this expert
        self.row_experts: Tensor | None = None  # or: each row's expert
        self.calls: Counter[tuple[str, object]] = Counter()

    def layer(self, site: str) -> str:
        """The experts layer a call site inside one expert belongs to (the expert's index left out)."""
        if site != self.prefix and not site.startswith(self.prefix + "."):
            return site
        # An expert list's member ``experts.3`` -> ``experts.each``: no index that reads as an expert's.
        return self.group.name + ("" if self.group.weights else ".each") + site[len(self.prefix) :]

    def call_key(self) -> object:
        return self.expert if self.row_experts is None else "rows"

    def observe(self, function: object, args: tuple, kwargs: dict | None) -> None:
        """Notes an access to the fused experts' weights: a slice (one expert), a gather (one expert
        per row), or a grouped product whose ``offs`` end each expert's run of sorted rows.
        """
        if not args or not self.group.weights:
            return
        if function is Tensor.__getitem__ and self._is_weight(args[0]) and len(args) > 1:
            index = args[1]
            if isinstance(index, int) or (isinstance(index, Tensor) and index.dim() == 0):
                self.expert, self.row_experts = int(index), None
            elif (
                isinstance(index, Tensor)
                and index.dim() == 1
                and not (index.is_floating_point() or index.dtype == torch.bool)
            ):
                self.expert, self.row_experts = None, index
            return
        offsets = (kwargs or {}).get("offs")
        if isinstance(offsets, Tensor) and any(self._is_weight(arg) for arg in args):
            sizes = torch.diff(offsets.long(), prepend=offsets.new_zeros(1, dtype=torch.long))
            experts = torch.arange(len(sizes), device=sizes.device)
            self.expert, self.row_experts = None, torch.repeat_interleave(experts, sizes)

    def _is_weight(self, tensor: object) -> bool:
        if not isinstance(tensor, Tensor):
            return False
        return id(tensor) in self.group.weights or (
            tensor._base is not None and id(tensor._base) in self.group.weights
        )

    def experts_of(self, rows: int) -> int | Tensor | None:
        """The expert of every row (an int), each row's expert (a tensor), or None when unknown."""
        if self.row_experts is not None:
            if self.row_experts.numel() == rows:
                return self.row_experts
            if self.row_experts.numel() < rows:  # rows past the last offset: no expert's (sentinels)
                pad = self.row_experts.new_full((rows - self.row_experts.numel(),), self.group.num_experts)
                return torch.cat([self.row_experts, pad])
            return None
        return self.expert


class ExpertStatistic:
    """One experts layer: a :class:`NodeStatistic` per expert, fed the rows routed to it."""

    def __init__(self, num_experts: int, statistic: str, threshold: float) -> None:
        self.experts = [NodeStatistic(statistic, threshold) for _ in range(num_experts)]
        self.width: int | None = None

    def reset(self) -> None:
        for expert in self.experts:
            expert.reset()

    def add(
        self, output: Tensor, batch_dim: int, node_dim: int, scratch: Scratch, experts: int | Tensor
    ) -> None:
        self.width = output.shape[node_dim]
        if isinstance(experts, int):
            if 0 <= experts < len(self.experts):
                self.experts[experts].add(output, batch_dim, node_dim, scratch)
            return
        with _compat.DisableTorchFunction():
            ids = experts.to(output.device, torch.long).clamp(0, len(self.experts))  # past the end: no expert
            order = torch.argsort(ids, stable=True)
            counts = torch.bincount(ids, minlength=len(self.experts) + 1).tolist()  # one host sync
            rows = output.index_select(batch_dim, order)
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:
                expert.add(rows.narrow(batch_dim, start, count), batch_dim, node_dim, scratch)
            start += count

    def units(self) -> list[NodeStatistic | _Idle]:
        """One statistic per expert for :meth:`ActivityTracker.compute`; an expert that saw nothing
        is a stand-in of the layer's width, so every process packs the same sizes.
        """
        return [_Idle(self.width) if expert.total is None else expert for expert in self.experts]


@dataclass
class _Idle:
    """An expert that got no row: no totals, the layer's width."""

    nodes: int | None
    total: None = None
    probe: None = None
    rows: int = 0


def expand(
    names: Sequence[str], stats: Mapping[str, NodeStatistic | ExpertStatistic]
) -> tuple[list[str], list[NodeStatistic | _Idle], list[int | None]]:
    """Layers -> units for packing: an experts layer becomes one unit per expert (same name)."""
    unit_names: list[str] = []
    units: list[NodeStatistic | _Idle] = []
    indices: list[int | None] = []
    for name in names:
        stat = stats[name]
        if isinstance(stat, ExpertStatistic):
            parts = stat.units()
            unit_names += [name] * len(parts)
            units += parts
            indices += list(range(len(parts)))
        else:
            unit_names.append(name)
            units.append(stat)
            indices.append(None)
    return unit_names, units, indices


def idle_activity(size: int) -> tuple[Tensor, Tensor]:
    """Activity (NaN) and active flags (none) of an expert that got no row."""
    return torch.full((size,), math.nan, dtype=torch.float64), torch.zeros(size, dtype=torch.bool)


def merge(layers: list[LayerActivity], indices: list[int | None], idle: list[bool]) -> list[LayerActivity]:
    """Joins the per-expert units of each experts layer into one layer, listing the idle experts.

    ``layers`` are ``LayerActivity`` records, one per kept unit; ``indices`` their expert index
    (None for an ordinary layer); ``idle`` whether the unit's expert got no row.
    """
    merged: list[LayerActivity] = []
    run: list[tuple[LayerActivity, int, bool]] = []

    def flush() -> None:
        if not run:
            return
        first = run[0][0]
        idle_experts = tuple(index for _, index, was_idle in run if was_idle)
        if idle_experts:
            warnings.warn(
                f"Layer {first.name!r}: experts {list(idle_experts)} of {len(run)} got no token in this "
                "measurement; their nodes have no activity (NaN) and are counted inactive.",
                RuntimeWarning,
                stacklevel=4,
            )
        merged.append(
            dataclasses.replace(
                first,
                activity=torch.cat([unit.activity for unit, _, _ in run]),
                active=torch.cat([unit.active for unit, _, _ in run]),
                nonfinite_nodes=sum(unit.nonfinite_nodes for unit, _, _ in run),
                experts=len(run),
                idle_experts=idle_experts,
            )
        )
        run.clear()

    for layer, index, was_idle in zip(layers, indices, idle):
        if index is None or (run and layer.name != run[0][0].name):
            flush()
        if index is None:
            merged.append(layer)
        else:
            run.append((layer, index, was_idle))
    flush()
    return merged
