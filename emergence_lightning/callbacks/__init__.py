"""Lightning callbacks: thin glue around the pure measure."""

from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.emergence_record import EmergenceRecord
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback

__all__ = ["EmergenceCallback", "EmergenceRecord", "PruneAndBranchCallback"]
