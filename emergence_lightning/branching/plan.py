"""The branch plan: which branches a fork makes, their names and kinds, and which of them a run trains.

No Lightning import. A branch's name is also its run directory (``branches/pruned-30``) and the
name a parallel job asks for (``only=["pruned-30"]``, ``emergence-lightning branch RUN --name pruned-30``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from emergence_lightning.pruning import apply_masks, check_pruning_arguments, masks, prune_model, reinitialize
from emergence_lightning.pruning.arguments import check_amount, check_seed, is_number

#: The parent's name in the results, the report and its HParams row (``branch/name``).
PARENT = "parent"

#: The kinds of branch: the unpruned control, a pruned copy, and the random controls of section 4.3.
KINDS = ("control", "pruned", "random-dense", "random-pruned")
#: Kinds that carry a pruning mask.
PRUNED_KINDS = ("pruned", "random-pruned")
#: Kinds that continue the parent's training state (random controls are new networks).
CONTINUING_KINDS = ("control", "pruned")

Model = TypeVar("Model", bound=nn.Module)  # a branch's model has the parent's class


@dataclass(frozen=True)
class BranchSpec:
    """One branch: its name (and run directory), kind, and the pruning fraction it gets."""

    name: str
    kind: str  # one of KINDS
    amount: float


@dataclass(frozen=True)
class PruningSettings:
    """How the pruned branches are pruned (the arguments of :func:`~emergence_lightning.pruning.prune_model`) and seeded."""

    pruning_fn: str = "l1_unstructured"
    use_global_unstructured: bool | None = None
    # Any sequences as given; stored as a tuple and a list (``__post_init__``).
    parameter_names: Sequence[str] = ("weight",)
    modules: Sequence[str] | None = None
    pruning_dim: int = 0
    pruning_norm: float | str = 1
    seed: int = 0

    def __post_init__(self) -> None:
        # The one place the callback's pruning arguments are checked: as given, so a message shows the value received.
        check_pruning_arguments(
            self.pruning_fn, self.use_global_unstructured, self.parameter_names, self.modules,
            self.pruning_dim, self.pruning_norm,
        )  # fmt: skip
        # NumPy scalars as Python numbers: they are recorded in experiment.json and compared.
        object.__setattr__(self, "seed", check_seed(self.seed))
        object.__setattr__(self, "pruning_dim", int(self.pruning_dim))
        object.__setattr__(self, "parameter_names", tuple(self.parameter_names))
        if self.modules is not None:
            object.__setattr__(self, "modules", list(self.modules))
        if is_number(self.pruning_norm):
            norm = float(self.pruning_norm)
            object.__setattr__(self, "pruning_norm", int(norm) if norm.is_integer() else norm)

    def prune(self, model: nn.Module, amount: float) -> nn.Module:
        """Prunes ``model`` in place; random functions draw the same mask in every process and rerun."""
        torch.manual_seed(self.seed)
        return prune_model(
            model,
            amount,
            pruning_fn=self.pruning_fn,
            use_global_unstructured=self.use_global_unstructured,
            parameter_names=self.parameter_names,
            modules=self.modules,
            pruning_dim=self.pruning_dim,
            pruning_norm=self.pruning_norm,
        )

    def branch_model(self, spec: BranchSpec, copy_parent: Callable[[], Model]) -> tuple[Model, list[str]]:
        """The model of ``spec`` made from ``copy_parent()`` (a fresh copy of the parent at the fork).

        Returns the model and the modules a random control could not re-initialise (no ``reset_parameters``).
        """
        model = copy_parent()
        if spec.kind == "pruned":
            self.prune(model, spec.amount)  # in place
            return model, []
        if spec.kind not in ("random-dense", "random-pruned"):
            return model, []
        mask_by_name = None
        if spec.kind == "random-pruned":
            # The mask of the pruned branch: prune a copy of the trained model, exactly as that branch was.
            mask_by_name = masks(self.prune(copy_parent(), spec.amount))
        torch.manual_seed(self.seed)
        left = reinitialize(model)
        if mask_by_name is not None:
            apply_masks(model, mask_by_name)
        return model, left


def plan_branches(amounts: Sequence[float], random_controls: bool = False) -> list[BranchSpec]:
    """The branches in the order they run: the control, one pruned copy per amount, then random controls.

    Example:
        >>> [spec.name for spec in plan_branches((0.3, 0.5), random_controls=True)]
        ['control', 'pruned-30', 'pruned-50', 'random-dense', 'random-pruned-30', 'random-pruned-50']
    """
    specs = [BranchSpec("control", "control", 0.0)]
    specs += [BranchSpec(pruned_name(amount), "pruned", amount) for amount in amounts]
    if random_controls:
        specs.append(BranchSpec("random-dense", "random-dense", 0.0))
        specs += [BranchSpec(random_pruned_name(amount), "random-pruned", amount) for amount in amounts]
    return specs


def check_only(only: Any, specs: Sequence[BranchSpec]) -> tuple[str, ...] | None:
    """The branch names ``only`` selects (``None``: all), each one of ``specs``.

    Raises:
        ValueError: a name that is no branch of this plan (the valid names are listed).
    """
    if only is None:
        return None
    if isinstance(only, str) or not isinstance(only, Iterable):
        raise TypeError(f"`only` must be None or a sequence of branch names, got {only!r}.")
    names = tuple(only)
    valid = [spec.name for spec in specs]
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(
            f"`only` names {unknown!r}, which are no branches of this plan; the branches are {valid!r}."
        )
    return names


def select(specs: Sequence[BranchSpec], only: Sequence[str] | None) -> list[BranchSpec]:
    """The specs ``only`` names, in plan order (all with ``None``)."""
    return [spec for spec in specs if only is None or spec.name in only]


def check_amounts(amounts: Any) -> tuple[float, ...]:
    """The pruning fractions as a tuple of floats, each in ``[0, 1)``, distinct, at least one.

    Example:
        >>> check_amounts([0.3, 0.5])
        (0.3, 0.5)
    """
    if isinstance(amounts, (str, bytes)) or not isinstance(amounts, Iterable):
        raise TypeError(f"`amounts` must be a non-empty sequence of fractions in [0, 1), got {amounts!r}.")
    values = tuple(amounts)
    if not values:
        raise ValueError(f"`amounts` must be a non-empty sequence of fractions in [0, 1), got {amounts!r}.")
    for value in values:
        try:
            check_amount(value)
        except ValueError:
            hint = ""
            if all(is_number(v) and 1 <= v < 100 for v in values):
                hint = f" Percents? Did you mean {tuple(float(v) / 100 for v in values)!r}?"
            raise ValueError(
                f"`amounts` must hold fractions in [0, 1), got {value!r} in {amounts!r}.{hint}"
            ) from None
    floats = tuple(float(value) for value in values)
    names = [pruned_name(value) for value in floats]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(
            f"`amounts` must be distinct (as whole percents, which name the branches), got {amounts!r}: "
            f"{', '.join(duplicated)} more than once."
        )
    return floats


def percent(amount: float) -> int:
    """A fraction as a whole percent: 0.3 -> 30."""
    return round(amount * 100)


def pruned_name(amount: float) -> str:
    """The branch name for a pruning fraction: ``pruned-30`` for 0.3."""
    return f"pruned-{percent(amount)}"


def random_pruned_name(amount: float) -> str:
    """The randomly initialised control that carries ``pruned-<pct>``'s mask: ``random-pruned-30``."""
    return f"random-pruned-{percent(amount)}"


def check_epochs(
    branch_epoch: int, max_epochs: Any, min_epochs: Any, trainer_kwargs: Mapping[str, Any]
) -> None:
    """The parent trains ``branch_epoch`` epochs and the branches at least one more."""
    if max_epochs is None or max_epochs < 0 or branch_epoch > max_epochs:
        raise ValueError(
            f"`branch_epoch`={branch_epoch} must be below the Trainer's `max_epochs`, got "
            f"max_epochs={max_epochs!r}: the parent trains `branch_epoch` epochs, the branches the rest."
        )
    branch_max = trainer_kwargs.get("max_epochs", max_epochs)
    if branch_max is None or branch_max < 0 or branch_epoch >= branch_max:
        source = "`trainer_kwargs['max_epochs']`" if "max_epochs" in trainer_kwargs else "`max_epochs`"
        raise ValueError(
            f"`branch_epoch`={branch_epoch} must be below the Trainer's {source}, got {branch_max!r}: "
            "the branches would have no epoch to train."
        )
    if min_epochs is not None and min_epochs > branch_epoch:
        raise ValueError(
            f"The Trainer's `min_epochs`={min_epochs} keeps the parent training past `branch_epoch`={branch_epoch}; "
            "lower `min_epochs`."
        )
