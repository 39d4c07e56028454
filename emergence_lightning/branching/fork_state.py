"""The parent's state at the fork, handed to every branch: where it stopped, optimizer, LR scheduler, RNG and data order.

No Lightning import. A branch builds its optimizer afresh (``configure_optimizers`` on the copied
model, whose pruned ``weight`` is now ``weight_orig``), so the parent's optimizer state is kept by
parameter *name*, not by position (pruning moves ``weight_orig`` behind ``bias`` in a module), and
loaded into the branch's optimizer by name, with the state of pruned entries zeroed.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from emergence_lightning.pruning.names import canonical_name


def parameter_names(module: nn.Module) -> dict[int, str]:
    """``id(parameter) -> canonical qualified name`` for every parameter of ``module``."""
    return {id(p): canonical_name(n) for n, p in module.named_parameters(remove_duplicate=False)}


@dataclass(frozen=True)
class OptimizerState:
    """One optimizer's state by parameter name: group hyperparameters, group membership, per-tensor state."""

    type_name: str
    groups: list[dict[str, Any]]  # hyperparameters of each param group, without "params"
    names: list[list[str]]  # canonical names of each group's parameters, in order
    state: dict[str, dict[str, Any]]  # per-parameter state (cloned to the CPU) by canonical name


@dataclass(frozen=True)
class ForkPoint:
    """Where the parent stopped: the branches continue its epoch and step counters from here."""

    epoch: int
    global_step: int
    batches_that_stepped: int
    fingerprint: str  # of the parent's weights at the fork (see :func:`~emergence_lightning.branching.store.fingerprint`)


@dataclass(frozen=True)
class ForkState:
    """The parent's training state at the fork, loaded into the control and pruned branches (``optimizer_state="continue"``)."""

    optimizers: list[OptimizerState]
    schedulers: list[tuple[str, dict[str, Any]]]
    rng: dict[str, Any]


def capture_optimizer(optimizer: torch.optim.Optimizer, module: nn.Module) -> OptimizerState:
    """The state of ``optimizer`` (which optimizes ``module``'s parameters), keyed by parameter name.

    Raises:
        ValueError: the optimizer holds a tensor that is no parameter of ``module``.
    """
    names = parameter_names(module)
    group_names, groups = [], []
    state: dict[str, dict[str, Any]] = {}
    for index, group in enumerate(optimizer.param_groups):
        members = []
        for tensor in group["params"]:
            if id(tensor) not in names:
                raise ValueError(
                    f"{type(optimizer).__name__} param group {index} holds a tensor of shape {tuple(tensor.shape)} "
                    f"that is no parameter of {type(module).__name__}; its state cannot be handed to the branches. "
                    "Optimize `self.parameters()`, or pass `optimizer_state='fresh'`."
                )
            name = names[id(tensor)]
            members.append(name)
            if tensor in optimizer.state:
                state[name] = {
                    key: value.detach().cpu().clone() if isinstance(value, Tensor) else copy.deepcopy(value)
                    for key, value in optimizer.state[tensor].items()
                }
        group_names.append(members)
        groups.append({key: copy.deepcopy(value) for key, value in group.items() if key != "params"})
    return OptimizerState(type(optimizer).__name__, groups, group_names, state)


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    saved: OptimizerState,
    module: nn.Module,
    mask_by_name: Mapping[str, Tensor] | None = None,
) -> None:
    """Loads ``saved`` into ``optimizer`` (built on ``module``, a copy of the parent, maybe pruned).

    Per-element state tensors (momentum, Adam's moments) of a pruned tensor are multiplied by its
    mask, so a pruned entry starts the branch with no momentum, as a weight that never moved.

    Raises:
        ValueError: the optimizer's type or parameter groups differ from the parent's.
    """
    masks = dict(mask_by_name or {})
    if type(optimizer).__name__ != saved.type_name:
        raise ValueError(
            f"The branch's `configure_optimizers` returned a {type(optimizer).__name__}, the parent's a "
            f"{saved.type_name}; the parent's optimizer state cannot continue. Pass `optimizer_state='fresh'`."
        )
    names = parameter_names(module)
    branch_names = [[names.get(id(tensor)) for tensor in group["params"]] for group in optimizer.param_groups]
    if [sorted(map(str, g)) for g in branch_names] != [sorted(g) for g in saved.names]:
        raise ValueError(
            "The branch's optimizer has other parameter groups than the parent's had at the fork: "
            f"parent {[len(g) for g in saved.names]} tensors per group, branch {[len(g) for g in branch_names]}"
            f"{_first_difference(saved.names, branch_names)}. Pass `optimizer_state='fresh'` to start it afresh."
        )
    state: dict[int, dict[str, Any]] = {}
    param_groups = []
    index = 0
    for group, members, hyper in zip(optimizer.param_groups, branch_names, saved.groups):
        indices = []
        for tensor, name in zip(group["params"], members):
            assert name is not None
            if name in saved.state:
                entry = dict(saved.state[name])
                mask = masks.get(name)
                if mask is not None:
                    entry = {
                        key: value * mask.to(value.dtype)
                        if isinstance(value, Tensor)
                        and value.shape == tensor.shape
                        and value.is_floating_point()
                        else value
                        for key, value in entry.items()
                    }
                state[index] = entry
            indices.append(index)
            index += 1
        param_groups.append({**copy.deepcopy(hyper), "params": indices})
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def _first_difference(parent: Sequence[Sequence[str]], branch: Sequence[Sequence[Any]]) -> str:
    for index, (a, b) in enumerate(zip(parent, branch)):
        missing, extra = sorted(set(a) - set(map(str, b))), sorted(set(map(str, b)) - set(a))
        if missing or extra:
            return f"; group {index}: parent only {missing[:5]!r}, branch only {extra[:5]!r}"
    return ""


def capture_schedulers(schedulers: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(type name, state dict)`` of every LR scheduler, deep-copied."""
    return [(type(s).__name__, copy.deepcopy(s.state_dict())) for s in schedulers]


def load_schedulers(schedulers: Sequence[Any], saved: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Loads the parent's scheduler states into the branch's schedulers (same order, same types).

    Raises:
        ValueError: a different number or type of schedulers.
    """
    types_now = [type(s).__name__ for s in schedulers]
    types_saved = [name for name, _ in saved]
    if types_now != types_saved:
        raise ValueError(
            f"The branch's LR schedulers {types_now!r} differ from the parent's {types_saved!r}; "
            "their state cannot continue. Pass `optimizer_state='fresh'`."
        )
    for scheduler, (_, state) in zip(schedulers, saved):
        scheduler.load_state_dict(copy.deepcopy(state))


def capture_rng() -> dict[str, Any]:
    """The global random states: Python's, NumPy's, torch's CPU one and, where CUDA is in use, CUDA's."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: Mapping[str, Any]) -> None:
    """Sets the global random states :func:`capture_rng` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


# ---- the data order: generators the dataloaders own -------------------------------------------
@dataclass
class DataOrder:
    """The state of every generator the dataloaders shuffle and seed workers with, at the fork.

    A DataLoader draws from its ``generator`` (or its sampler's) as it starts an epoch: the worker
    base seed, then the permutation. A branch's Trainer starts an epoch's iterator once more than
    the unforked run does (Lightning's ``setup_data``), so the states are set again as the branch
    starts training, after that: the branch then draws exactly what the unforked run would.
    """

    #: The generators of the data the branches are handed (the same objects), with their states.
    by_object: list[tuple[torch.Generator, Tensor]] = field(default_factory=list)
    #: States of the generators of the parent's training loaders in :func:`loader_generators` order,
    #: set into the branch's own training loaders (a data module builds new ones per Trainer); None: other data.
    train_states: list[Tensor] | None = None

    def restore(self, train_loaders: Any) -> None:
        """Sets every generator back to its state at the fork; ``train_loaders``: the branch's training loaders."""
        for generator, state in self.by_object:
            generator.set_state(state)
        if self.train_states is None:
            return
        live = loader_generators([train_loaders])
        if len(live) == len(self.train_states):
            for generator, state in zip(live, self.train_states):
                generator.set_state(state)


def loader_generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    """Every generator the given dataloaders (in lists, tuples or dicts) or their samplers draw from, in order."""
    found: list[torch.Generator] = []

    def visit(item: Any) -> None:
        if isinstance(item, (list, tuple)):
            for value in item:
                visit(value)
        elif isinstance(item, Mapping):
            for value in item.values():
                visit(value)
        elif isinstance(item, DataLoader):
            for owner in (item, item.sampler, getattr(item.batch_sampler, "sampler", None)):
                generator = getattr(owner, "generator", None)
                if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                    found.append(generator)

    visit(list(loaders))
    return found


def data_order(data: Iterable[Any], train_loaders: Any) -> DataOrder:
    """The data order at the fork: ``data``, the objects the branches get; ``train_loaders``: the parent's (None: other data)."""
    return DataOrder(
        by_object=[(generator, generator.get_state()) for generator in loader_generators(data)],
        train_states=None
        if train_loaders is None
        else [generator.get_state() for generator in loader_generators([train_loaders])],
    )
