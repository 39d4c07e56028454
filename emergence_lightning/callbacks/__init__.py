"""Lightning callbacks and what drives Trainers: thin glue around the pure tiers.

- :mod:`.emergence`: ``EmergenceCallback``; :mod:`.prune_and_branch`: ``PruneAndBranchCallback``.
- EmergenceCallback's parts: :mod:`.emergence_window` (the measurement window), :mod:`.probe` (passes of
  its own and their data), :mod:`.emergence_record` (the typed record), :mod:`.emergence_lifecycle` (runs,
  resumes), :mod:`.emergence_checks` (arguments and warnings), :mod:`.lightning_state` (Trainer reads).
- :mod:`.branch_runner`: trains each branch (seeding, data order, failure isolation); the saved fork.
- :mod:`.trainer_factory`: the one place that reads a parent Trainer's settings.
- :mod:`.branch_command`: the ``emergence-lightning branch`` command.
- :mod:`.tensorboard_views`: TensorBoard layouts, HParams and end-of-run summaries.
"""

from emergence_lightning.callbacks.branch_runner import run_saved_branches, saved_plan
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.emergence_record import EmergenceRecord
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback

__all__ = [
    "EmergenceCallback",
    "EmergenceRecord",
    "PruneAndBranchCallback",
    "run_saved_branches",
    "saved_plan",
]
