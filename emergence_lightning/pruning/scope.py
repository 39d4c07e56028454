"""Which tensors pruning takes: the trainable weight matrices that ``P`` counts, attention's included.

No Lightning import. ``count_parameters`` counts trainable parameters only, so a frozen tensor is
never pruned by default (its zeros would change no count and cost the trainable ones their share
of ``amount``). ``nn.MultiheadAttention`` keeps its query/key/value weights in ``in_proj_weight``
(or ``q_proj_weight`` ...) rather than in a Linear, and calls its ``out_proj`` Linear's weight
without calling that Linear: both need care here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import prune

from emergence_lightning import _compat
from emergence_lightning.pruning.names import ORIG, canonical_name

#: Modules pruned by default: every Linear and convolution (transposed too) and multi-head attention.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)
# Modules whose forward reads their submodules' weights without calling those submodules (so the
# submodules' pruning hooks would not run): attention's `out_proj`, the encoder layers' fast path.
_BYPASSING_TYPES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def tensor_names(module: nn.Module, parameter_name: str) -> list[str]:
    """The tensors ``parameter_name`` stands for in ``module``: attention's weight is its q/k/v projection."""
    if isinstance(module, nn.MultiheadAttention):
        if parameter_name == "weight":
            if _parameter(module, "in_proj_weight") is not None:
                return ["in_proj_weight"]
            return [
                name
                for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight")
                if _parameter(module, name) is not None
            ]
        if parameter_name == "bias":
            return ["in_proj_bias"] if _parameter(module, "in_proj_bias") is not None else []
    return [parameter_name] if _parameter(module, parameter_name) is not None else []


def _parameter(module: nn.Module, name: str) -> Tensor | None:
    # An already pruned parameter lives on as `<name>_orig` (prune stacks masks on it).
    parameters = dict(module.named_parameters(recurse=False, remove_duplicate=False))
    for candidate in (name, name + ORIG):
        value = parameters.get(candidate)
        if isinstance(value, Tensor):
            return value
    return None


def find_prunable(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    parameter_names: Sequence[str] = ("weight",),
    skip_last: bool = False,
) -> list[tuple[str, nn.Module, str]]:
    """The ``(module name, module, tensor name)`` triples to prune.

    Args:
        model: the network.
        modules: qualified names of the modules to prune; ``None`` takes every Linear, Conv and
            MultiheadAttention whose tensor is trainable (frozen ones are not counted in ``P``).
        parameter_names: the parameters of each module to prune (``"weight"``, ``"bias"``); for
            attention, ``"weight"`` is ``in_proj_weight`` (or ``q/k/v_proj_weight``), ``"bias"`` ``in_proj_bias``.
        skip_last: with ``modules=None``, leave out the last Linear/Conv (the output layer),
            which structured pruning would otherwise cut output classes from.

    Raises:
        ValueError: a module name the model lacks, a parameter name a module lacks, or nothing to prune.
    """
    named = dict(model.named_modules())
    if modules is None:
        chosen = [(name, module) for name, module in named.items() if isinstance(module, PRUNABLE_TYPES)]
        if skip_last and len(chosen) > 1:
            chosen = chosen[:-1]
        if not chosen:
            raise ValueError(
                f"{type(model).__name__} has no module to prune: no nn.Linear or nn.Conv*d (nor nn.MultiheadAttention); "
                "name the modules with `modules=[...]`."
            )
    else:
        unknown = [name for name in modules if name not in named]
        if unknown:
            raise ValueError(
                f"`modules` names {unknown!r}, which {type(model).__name__} does not have; "
                f"it has {[name for name in named if name][:20]!r}."
            )
        chosen = [(name, named[name]) for name in modules]
    triples = []
    frozen = 0
    for module_name, module in chosen:
        for parameter_name in parameter_names:
            found = tensor_names(module, parameter_name)
            if not found and not (isinstance(module, nn.MultiheadAttention) and modules is None):
                raise ValueError(
                    f"`parameter_names` includes {parameter_name!r}, but module "
                    f"{module_name or type(model).__name__!r} ({type(module).__name__}) has no such parameter; "
                    f"its parameters are {[canonical_name(n) for n, _ in module.named_parameters(recurse=False)]!r}."
                )
            for tensor_name in found:
                parameter = _parameter(module, tensor_name)  # found: never None
                if modules is None and parameter is not None and not parameter.requires_grad:
                    frozen += 1
                    continue
                triples.append((module_name, module, tensor_name))
    if not triples:
        raise ValueError(
            f"{type(model).__name__} has nothing trainable to prune: all {frozen} candidate tensors are frozen "
            "(`requires_grad=False`); name the modules with `modules=[...]` to prune frozen ones."
        )
    return triples


class _RefreshPruned:
    """A forward pre-hook that recomputes the pruned tensors of a module's submodules.

    ``nn.MultiheadAttention`` passes ``out_proj.weight`` to its functional forward without calling
    ``out_proj``, and the Transformer layers' inference fast path reads every weight directly: the
    submodules' own pruning hooks would not run, leaving a stale, detached ``weight`` (kept entries
    that never train). Holds no reference, so a deep copy of the model stays self-contained.
    """

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        for child in module.modules():
            if child is module:
                continue
            for hook in _compat.forward_pre_hooks(child):
                if isinstance(hook, prune.BasePruningMethod):
                    hook(child, None)


def refresh_bypassed_masks(model: nn.Module) -> nn.Module:
    """Registers :class:`_RefreshPruned` on every attention or Transformer layer with pruned submodules (once)."""
    for module in model.modules():
        if not isinstance(module, _BYPASSING_TYPES):
            continue
        pruned_below = any(
            isinstance(hook, prune.BasePruningMethod)
            for child in module.modules()
            if child is not module
            for hook in _compat.forward_pre_hooks(child)
        )
        if pruned_below and not any(isinstance(h, _RefreshPruned) for h in _compat.forward_pre_hooks(module)):
            module.register_forward_pre_hook(_RefreshPruned())
    return model
