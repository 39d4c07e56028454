"""Pruning: prune a model, its masks, a permanent state dict, re-initialisation.

No Lightning import: everything here works on plain ``torch.nn.Module`` objects.

- :mod:`.params`: :func:`count_parameters` (trainable elements, pruning masks respected).
- :mod:`.scope`: which tensors are pruned by default (the trainable weights ``P`` counts).
- :mod:`.masks`: :func:`prune_model`, :func:`masks`, :func:`apply_masks`, :func:`permanent_state_dict`,
  :func:`reinitialize`.
- :mod:`.arguments`, :mod:`.names`: the argument checks and names every helper shares.
"""

from emergence_lightning.pruning.arguments import check_amount, check_pruning_arguments
from emergence_lightning.pruning.masks import (
    apply_masks,
    effective_weights_zero_where_masked,
    masks,
    permanent_state_dict,
    prune_model,
    reinitialize,
)
from emergence_lightning.pruning.names import PRUNING_FUNCTIONS, STRUCTURED_PRUNING_FUNCTIONS
from emergence_lightning.pruning.params import count_parameters
from emergence_lightning.pruning.scope import PRUNABLE_TYPES, find_prunable

__all__ = [
    "PRUNABLE_TYPES",
    "PRUNING_FUNCTIONS",
    "STRUCTURED_PRUNING_FUNCTIONS",
    "apply_masks",
    "check_amount",
    "check_pruning_arguments",
    "count_parameters",
    "effective_weights_zero_where_masked",
    "find_prunable",
    "masks",
    "permanent_state_dict",
    "prune_model",
    "reinitialize",
]
