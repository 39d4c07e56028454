"""Names shared by every pruning helper: how ``torch.nn.utils.prune`` renames a pruned tensor, and our functions.

No Lightning import. ``prune`` turns a parameter ``weight`` into a ``weight_orig`` parameter and a
``weight_mask`` buffer; the helpers here and in :mod:`emergence_lightning.branching` rely on these
two suffixes, so they are defined once, here.
"""

from __future__ import annotations

ORIG = "_orig"
MASK = "_mask"

#: Pruning functions, named as Lightning's ``ModelPruning`` names them.
PRUNING_FUNCTIONS = ("l1_unstructured", "random_unstructured", "ln_structured", "random_structured")
STRUCTURED_PRUNING_FUNCTIONS = ("ln_structured", "random_structured")


def canonical_name(name: str) -> str:
    """A parameter's name as the unpruned model has it: ``net.0.weight_orig`` -> ``net.0.weight``."""
    return name.removesuffix(ORIG)
