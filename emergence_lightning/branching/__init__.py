"""Pure helpers for forking a model into pruned branches: pruning, masks, re-initialisation, results.

No Lightning import: everything here works on plain ``torch.nn.Module`` objects and numbers, and
is what :class:`~emergence_lightning.callbacks.PruneAndBranchCallback` calls at the fork.

Pruning goes through ``torch.nn.utils.prune``, so a pruned ``weight`` becomes a ``weight_orig``
parameter times a ``weight_mask`` buffer, recomputed before every forward pass: pruned weights
stay exactly zero while the branch trains, and
:func:`~emergence_lightning.pruning.count_parameters` counts only the mask's ones.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from typing_extensions import Self

from emergence_lightning.branching.scope import (
    PRUNABLE_TYPES,
    find_prunable,
    qualified_names,
    refresh_bypassed_masks,
    tensor_names,
)

#: Pruning functions, named as Lightning's ``ModelPruning`` names them.
PRUNING_FUNCTIONS = ("l1_unstructured", "random_unstructured", "ln_structured", "random_structured")
STRUCTURED_PRUNING_FUNCTIONS = ("ln_structured", "random_structured")

_ORIG = "_orig"
_MASK = "_mask"


# ---- arguments ----------------------------------------------------------------------------
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            hint = ""
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v < 100 for v in values):
                hint = f" Percents? Did you mean {tuple(v / 100 for v in values)!r}?"
            raise ValueError(f"`amounts` must hold fractions in [0, 1), got {value!r} in {amounts!r}.{hint}")
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


# ---- pruning ------------------------------------------------------------------------------
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
    if pruning_fn not in PRUNING_FUNCTIONS:
        raise ValueError(f"`pruning_fn` must be one of {PRUNING_FUNCTIONS}, got {pruning_fn!r}.")
    structured = pruning_fn in STRUCTURED_PRUNING_FUNCTIONS
    if use_global_unstructured is None:
        use_global_unstructured = not structured
    if structured and use_global_unstructured:
        raise ValueError(
            f"`use_global_unstructured=True` works with unstructured pruning only, got `pruning_fn`={pruning_fn!r}; "
            "pass `use_global_unstructured=False` (or None)."
        )
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"`amount` must be a fraction in [0, 1), got {amount!r}.")
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
    ``copy.deepcopy`` refuses; store it detached (the next forward pass recomputes it anyway)."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                with torch.no_grad():
                    setattr(module, hook._tensor_name, hook.apply_mask(module))
    return model


def _mask_bias_of_removed_nodes(module: nn.Module, parameter_names: Sequence[str]) -> None:
    bias = getattr(module, "bias", None)
    if "bias" in parameter_names or not isinstance(bias, Tensor):
        return
    mask = getattr(module, "weight" + _MASK)
    kept = mask.flatten(1).any(dim=1)
    if not kept.all():
        prune.custom_from_mask(module, "bias", kept.to(bias.dtype))


def masks(model: nn.Module) -> dict[str, Tensor]:
    """Every pruning mask of ``model`` by the qualified name of the tensor it masks (``net.0.weight``)."""
    found = {}
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer_name.endswith(_MASK) and isinstance(
                module._parameters.get(buffer_name[: -len(_MASK)] + _ORIG), Tensor
            ):
                key = buffer_name[: -len(_MASK)]
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
        if key.endswith(_MASK) and key[: -len(_MASK)] + _ORIG in state:
            continue
        if key.endswith(_ORIG) and key[: -len(_ORIG)] + _MASK in state:
            base = key[: -len(_ORIG)]
            plain[base] = (value * state[base + _MASK]).detach().clone()
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


# Optimizers whose update of an entry depends only on that entry's gradient, state and value, and is
# exactly zero for a zero weight whose gradient has always been zero (momentum, moments and weight
# decay of a zero stay zero). With masked gradients their masked weights stay zero by themselves.
_ZERO_PRESERVING_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.Adadelta,
    torch.optim.Adamax, torch.optim.RMSprop, torch.optim.NAdam, torch.optim.RAdam,
)


def keeps_masked_weights_at_zero(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer``, given masked gradients, leaves masked (zero) weights exactly zero.

    True for the built-in element-wise optimizers (exact type, not subclasses, which may change
    the update). Others (LBFGS, user-written ones) need the weights re-masked after every step.

    Example:
        >>> keeps_masked_weights_at_zero(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
        True
    """
    return type(optimizer) in _ZERO_PRESERVING_OPTIMIZERS


class _AliasMask(prune.BasePruningMethod):
    """Stands in for a pruning hook while :class:`MaskedTraining` keeps ``<name>_orig`` masked.

    ``<name>_orig`` then equals ``<name>_orig * <name>_mask`` exactly, so the forward pass can use
    it as ``<name>`` without the multiplication. Being a ``BasePruningMethod`` with the same
    ``_tensor_name``, it keeps ``prune.is_pruned`` and ``prune.remove`` working meanwhile.
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, tensor_name: str) -> None:
        self._tensor_name = tensor_name
        self._orig_name = tensor_name + _ORIG

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        module.__dict__[self._tensor_name] = module._parameters[self._orig_name]


class MaskedTraining:
    """Trains a pruned model with its masks applied, without a multiplication in every forward pass.

    ``torch.nn.utils.prune`` recomputes ``weight = weight_orig * weight_mask`` before every forward
    pass and multiplies the gradient by the mask on the way back: two passes over every pruned
    tensor per step, which on a small model at small batches costs as much as the matrix
    products. While open, this keeps the masked entries of ``weight_orig`` at exactly zero instead
    (zeroed once, their gradients masked by :meth:`mask_gradients` before every optimizer step and
    the weights re-masked by :meth:`mask_weights` after it), so ``weight_orig`` itself is the
    masked weight and the forward pass uses it directly. Forward values and gradients are those
    of ``torch.nn.utils.prune``; :meth:`close` puts its hooks back.

    Example:
        >>> net = prune_model(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), 0.5)
        >>> with MaskedTraining(net) as masked:
        ...     net(torch.randn(5, 4)).sum().backward()
        ...     masked.mask_gradients()
        >>> effective_weights_zero_where_masked(net)
        True
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._swapped: list[tuple[nn.Module, Any, prune.BasePruningMethod]] = []
        self.tensors: list[tuple[nn.Module, str]] = []  # (module, name) of every pruned tensor
        for module in model.modules():
            for key, hook in module._forward_pre_hooks.items():
                if isinstance(hook, prune.BasePruningMethod) and not isinstance(hook, _AliasMask):
                    self._swapped.append((module, key, hook))
                    self.tensors.append((module, hook._tensor_name))

    def _pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        # Looked up each time: a buffer or parameter may be replaced (DDP broadcasts into it in place).
        origs = [module._parameters[name + _ORIG] for module, name in self.tensors]
        masks_ = [module._buffers[name + _MASK] for module, name in self.tensors]
        return origs, masks_

    def open(self) -> MaskedTraining:
        self.mask_weights()
        for module, key, hook in self._swapped:
            alias = _AliasMask(hook._tensor_name)
            module._forward_pre_hooks[key] = alias
            alias(module, None)
        return self

    @torch.no_grad()
    def mask_weights(self) -> None:
        """Zeroes the masked entries of every ``<name>_orig``."""
        origs, masks_ = self._pairs()
        if origs:
            torch._foreach_mul_(origs, [m.to(o.dtype) for o, m in zip(origs, masks_)])

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zeroes the gradient of every masked entry, as ``weight_orig * weight_mask`` would have."""
        origs, masks_ = self._pairs()
        pairs = [(o.grad, m) for o, m in zip(origs, masks_) if o.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m.to(g.dtype) for g, m in pairs])

    def close(self) -> None:
        """Puts ``torch.nn.utils.prune``'s own hooks back (``<name>`` recomputed, detached)."""
        for module, key, hook in self._swapped:
            if isinstance(module._forward_pre_hooks.get(key), _AliasMask):
                module._forward_pre_hooks[key] = hook
                with torch.no_grad():
                    setattr(module, hook._tensor_name, hook.apply_mask(module))
        self._swapped = []

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---- random controls ----------------------------------------------------------------------
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


# ---- results ------------------------------------------------------------------------------
def fingerprint(state_dict: dict[str, Any]) -> str:
    """A short hash of the tensors of a state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha1()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode())
        if isinstance(value, Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            # 1-D first: a 0-dim tensor (BatchNorm's `num_batches_tracked`) cannot be viewed as bytes
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def epochs_to_fraction_of_final(
    values: Sequence[float], fraction: float = 0.99, mode: str = "max"
) -> int | None:
    """Epochs (1-based, one value per epoch) until the metric first came within ``fraction`` of its final value.

    With ``mode="max"`` (accuracy) that is the first value ``>= fraction * final``; with
    ``mode="min"`` (a loss) the first value ``<= final / fraction``. ``None`` without a finite final value.

    Example:
        >>> epochs_to_fraction_of_final([0.5, 0.90, 0.955, 0.96])
        3
        >>> epochs_to_fraction_of_final([2.0, 1.0, 0.5], mode="min")
        3
    """
    if mode not in ("max", "min"):
        raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}.")
    if not values or not math.isfinite(values[-1]):
        return None
    final = values[-1]
    if mode == "max":
        target = fraction * final if final >= 0 else final / fraction
        reached = (value >= target for value in values)
    else:
        target = final / fraction if final >= 0 else final * fraction
        reached = (value <= target for value in values)
    for epoch, hit in enumerate(reached, start=1):
        if hit:
            return epoch
    return len(values)


_VAL_ACC = re.compile(r"val.*acc", re.IGNORECASE)
_VAL_LOSS = re.compile(r"val.*loss", re.IGNORECASE)
_ACC = re.compile(r"acc", re.IGNORECASE)


def pick_monitor(keys: Iterable[str]) -> tuple[str, str] | None:
    """The metric to compare branches on, and its mode, from the keys a model logs.

    Validation accuracy when there is one, else validation loss, else any accuracy; ``None`` if
    none of these is logged.

    Example:
        >>> pick_monitor(["train_loss", "val_loss", "val_acc"])
        ('val_acc', 'max')
    """
    keys = [key for key in keys if not key.startswith(("emergence/", "branch/")) and key != "epoch"]
    for pattern, mode in ((_VAL_ACC, "max"), (_VAL_LOSS, "min"), (_ACC, "max")):
        matches = sorted((key for key in keys if pattern.search(key)), key=lambda k: (len(k), k))
        if matches:
            return matches[0], mode
    return None
