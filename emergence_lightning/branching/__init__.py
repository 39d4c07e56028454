"""Branching: fork a trained model into a control and pruned copies and train each.

- :mod:`.plan`: which branches (names, kinds, amounts) and how they are pruned.
- :mod:`.fork_state`: the parent's state at the fork (counters, optimizer, schedulers, RNG).
- :mod:`.result`: :class:`BranchResult`, one branch's result.
- :mod:`.store`: result files, the experiment record, checksums, the saved fork, resume, atomic writes.
- :mod:`.lock`: one job per branch.
- :mod:`.table`: the summary text and ``summary.csv`` columns.

The pure pruning helpers live in :mod:`emergence_lightning.pruning`; the names below are
re-exported here for code written against the earlier layout. What drives Trainers (the branch
runner, the trainer factory, the ``branch`` command) lives with the callbacks, in
:mod:`emergence_lightning.callbacks`.
"""

from emergence_lightning.branching.lock import BranchLockedError
from emergence_lightning.branching.monitor import epochs_to_fraction_of_final, pick_monitor
from emergence_lightning.branching.plan import (
    BranchSpec,
    PruningSettings,
    check_amounts,
    percent,
    plan_branches,
    pruned_name,
    random_pruned_name,
)
from emergence_lightning.branching.result import BranchResult
from emergence_lightning.branching.store import CorruptFileError, ExperimentMismatchError, fingerprint
from emergence_lightning.pruning import (
    PRUNABLE_TYPES,
    PRUNING_FUNCTIONS,
    STRUCTURED_PRUNING_FUNCTIONS,
    apply_masks,
    effective_weights_zero_where_masked,
    find_prunable,
    masks,
    permanent_state_dict,
    prune_model,
    reinitialize,
)

__all__ = [
    "PRUNABLE_TYPES",
    "PRUNING_FUNCTIONS",
    "STRUCTURED_PRUNING_FUNCTIONS",
    "BranchLockedError",
    "BranchResult",
    "BranchSpec",
    "CorruptFileError",
    "ExperimentMismatchError",
    "PruningSettings",
    "apply_masks",
    "check_amounts",
    "effective_weights_zero_where_masked",
    "epochs_to_fraction_of_final",
    "find_prunable",
    "fingerprint",
    "masks",
    "percent",
    "permanent_state_dict",
    "pick_monitor",
    "plan_branches",
    "prune_model",
    "pruned_name",
    "random_pruned_name",
    "reinitialize",
]
