"""Prune a model with ``torch.nn.utils.prune``, read and apply its masks, make pruning permanent.

No Lightning import; everything works on plain ``torch.nn.Module`` objects. A pruned ``weight``
becomes a ``weight_orig`` parameter times a ``weight_mask`` buffer, recomputed before every
forward pass: pruned weights stay exactly zero while the model trains, and
:func:`~emergence_lightning.pruning.count_parameters` counts only the mask's ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from emergence_lightning import _compat
from emergence_lightning.pruning.arguments import check_amount, check_pruning_arguments
from emergence_lightning.pruning.names import MASK, ORIG, STRUCTURED_PRUNING_FUNCTIONS
from emergence_lightning.pruning.scope import find_prunable, refresh_bypassed_masks


def prune_model(
    model: nn.Module,
    amount: float,
    pruning_fn: str = "l1_unstructured",
    use_global_unstructured: bool | None = None,
    parameter_names: Sequence[str] = ("weight",),
    modules: Sequence[str] | None = None,
    pruning_dim: int = 0,
    pruning_norm: float | str = 1,
    remove_nodes: bool = True,
) -> nn.Module:
    """Prunes ``model`` in place by magnitude (or at random) with ``torch.nn.utils.prune``.

    Unstructured functions zero single weights: by default the ``amount`` smallest in absolute
    value across all pruned tensors together (global); with ``use_global_unstructured=False``,
    ``amount`` of every tensor. Structured functions zero whole slices along ``pruning_dim``
    (dimension 0 of a Linear or Conv weight: output neurons or channels) of every tensor; with
    ``remove_nodes`` the bias of a zeroed output neuron is masked too, so the node outputs a
    constant zero, as if removed. By default structured pruning leaves the output layer alone.

    Args:
        model: the network, pruned in place (and returned).
        amount: fraction in ``[0, 1)`` to prune.
        pruning_fn: one of :data:`PRUNING_FUNCTIONS`.
        use_global_unstructured: prune all tensors together; ``None`` means yes for unstructured
            functions and no for structured ones (torch has no global structured pruning).
        parameter_names: parameters of each module to prune.
        modules: qualified module names to prune; ``None`` takes every trainable Linear, Conv and attention weight.
        pruning_dim: the dimension structured pruning removes slices along.
        pruning_norm: the norm ``ln_structured`` ranks slices by (1, 2, ``"fro"``, ...).
        remove_nodes: with structured pruning along dim 0, also mask the pruned nodes' biases.

    Example:
        >>> from emergence_lightning.pruning import count_parameters
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> count_parameters(net)
        23
        >>> _ = prune_model(net, 0.5)   # half of the 12 + 6 weights, the smallest, globally
        >>> count_parameters(net)
        14
    """
    check_pruning_arguments(
        pruning_fn, use_global_unstructured, parameter_names, modules, pruning_dim, pruning_norm
    )
    amount = check_amount(amount)
    structured = pruning_fn in STRUCTURED_PRUNING_FUNCTIONS
    if use_global_unstructured is None:
        use_global_unstructured = not structured
    targets = find_prunable(model, modules, parameter_names, skip_last=structured)
    if use_global_unstructured:
        method = prune.L1Unstructured if pruning_fn == "l1_unstructured" else prune.RandomUnstructured
        prune.global_unstructured(
            [(module, name) for _, module, name in targets], pruning_method=method, amount=float(amount)
        )
        return _detach_pruned(refresh_bypassed_masks(model))
    for _, module, name in targets:
        if pruning_fn == "l1_unstructured":
            prune.l1_unstructured(module, name, amount=float(amount))
        elif pruning_fn == "random_unstructured":
            prune.random_unstructured(module, name, amount=float(amount))
        elif pruning_fn == "ln_structured":
            prune.ln_structured(module, name, amount=float(amount), n=pruning_norm, dim=pruning_dim)
        else:
            prune.random_structured(module, name, amount=float(amount), dim=pruning_dim)
        if structured and remove_nodes and name == "weight" and pruning_dim == 0:
            _mask_bias_of_removed_nodes(module, parameter_names)
    return _detach_pruned(refresh_bypassed_masks(model))


def _detach_pruned(model: nn.Module) -> nn.Module:
    """Pruning leaves each ``<name> = <name>_orig * <name>_mask`` as a graph result, which
    ``copy.deepcopy`` refuses; store it detached (the next forward pass recomputes it anyway).
    """
    for module in model.modules():
        for hook in _compat.forward_pre_hooks(module):
            if isinstance(hook, prune.BasePruningMethod):
                with torch.no_grad():
                    setattr(module, _compat.pruned_tensor_name(hook), hook.apply_mask(module))
    return model


def _mask_bias_of_removed_nodes(module: nn.Module, parameter_names: Sequence[str]) -> None:
    bias = getattr(module, "bias", None)
    if "bias" in parameter_names or not isinstance(bias, Tensor):
        return
    mask = getattr(module, "weight" + MASK)
    kept = mask.flatten(1).any(dim=1)
    if not kept.all():
        prune.custom_from_mask(module, "bias", kept.to(bias.dtype))


def masks(model: nn.Module) -> dict[str, Tensor]:
    """Every pruning mask of ``model`` by the qualified name of the tensor it masks (``net.0.weight``)."""
    found = {}
    for module_name, module in model.named_modules():
        parameters = dict(module.named_parameters(recurse=False, remove_duplicate=False))
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer_name.endswith(MASK) and isinstance(
                parameters.get(buffer_name[: -len(MASK)] + ORIG), Tensor
            ):
                key = buffer_name[: -len(MASK)]
                found[f"{module_name}.{key}" if module_name else key] = buffer.detach().clone()
    return found


def apply_masks(model: nn.Module, mask_by_name: dict[str, Tensor]) -> nn.Module:
    """Prunes ``model`` in place with the given masks (from :func:`masks` of a same-shaped model)."""
    named = dict(model.named_modules())
    for qualified, mask in mask_by_name.items():
        module_name, _, parameter_name = qualified.rpartition(".")
        if module_name not in named:
            raise ValueError(
                f"{type(model).__name__} has no module {module_name!r} for the mask of {qualified!r}."
            )
        prune.custom_from_mask(named[module_name], parameter_name, mask)
    return _detach_pruned(refresh_bypassed_masks(model))


def permanent_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with pruning made permanent, without touching ``model``.

    ``<name>_orig`` times ``<name>_mask`` becomes ``<name>`` (pruned entries exactly zero), the
    masks are left out, and the keys are those of the unpruned model, so the result loads into
    a fresh copy of the architecture.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> _ = prune.l1_unstructured(layer, "weight", amount=0.5)
        >>> sorted(permanent_state_dict(layer))
        ['bias', 'weight']
    """
    state = model.state_dict()
    plain: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(MASK) and key[: -len(MASK)] + ORIG in state:
            continue
        if key.endswith(ORIG) and key[: -len(ORIG)] + MASK in state:
            base = key[: -len(ORIG)]
            plain[base] = (value * state[base + MASK]).detach().clone()
        else:
            plain[key] = value.detach().clone()
    return plain


def effective_weights_zero_where_masked(model: nn.Module) -> bool:
    """Whether every masked entry of every pruned tensor is exactly zero in the tensor the forward pass uses."""
    named = dict(model.named_modules())
    for qualified, mask in masks(model).items():
        module_name, _, parameter_name = qualified.rpartition(".")
        effective = getattr(named[module_name], parameter_name)
        if bool((effective.detach()[mask == 0] != 0).any()):
            return False
    return True


def reinitialize(model: nn.Module) -> list[str]:
    """Re-draws the parameters of ``model`` in place with each module's own ``reset_parameters()``.

    Seed torch's generator first for a reproducible draw. Returns the names of modules that hold
    parameters of their own but have no ``reset_parameters``: their values are left as they were.
    """
    left = []
    for name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        elif any(True for _ in module.parameters(recurse=False)):
            left.append(name or type(module).__name__)
    return left
