"""Parameter counting that respects ``torch.nn.utils.prune`` masks (no Lightning import)."""

from __future__ import annotations

from torch import nn

from emergence_lightning.pruning.names import MASK, ORIG


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements still free to train.

    Every trainable (``requires_grad``) parameter element counts, except elements held at zero by
    a pruning mask: ``torch.nn.utils.prune`` replaces ``weight`` by a ``weight_orig`` parameter and
    a ``weight_mask`` buffer, and only the mask's ones count. Shared parameters count once.

    Example:
        >>> import torch
        >>> from torch.nn.utils import prune
        >>> layer = torch.nn.Linear(4, 2)
        >>> count_parameters(layer)
        10
        >>> _ = prune.l1_unstructured(layer, "weight", amount=0.5)
        >>> count_parameters(layer)
        6
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
    total = 0
    seen: set[int] = set()
    for owner in module.modules():
        for name, parameter in owner.named_parameters(recurse=False):
            if id(parameter) in seen or not parameter.requires_grad:
                continue
            seen.add(id(parameter))
            mask = None
            if name.endswith(ORIG):
                mask = dict(owner.named_buffers(recurse=False, remove_duplicate=False)).get(
                    name[: -len(ORIG)] + MASK
                )
            total += int(mask.count_nonzero()) if mask is not None else parameter.numel()
    return total
