"""Masked training without a multiplication per forward pass (``fast_masks``).

No Lightning import. See :class:`MaskedTraining`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from typing_extensions import Self

from emergence_lightning.pruning.names import MASK, ORIG


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
        self._orig_name = tensor_name + ORIG

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
        >>> from emergence_lightning.pruning import effective_weights_zero_where_masked, prune_model
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
        origs = [module._parameters[name + ORIG] for module, name in self.tensors]
        masks_ = [module._buffers[name + MASK] for module, name in self.tensors]
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
