"""Measure emergence while a PyTorch Lightning model trains.

The library: :mod:`.callbacks` (Lightning glue) over the pure tiers :mod:`.measure`,
:mod:`.pruning`, :mod:`.connectivity`, :mod:`.branching` and :mod:`.predictor` (scores at
initialisation). The paper's side (data modules, models, experiments, reports, the predictor
study and the command line) lives in :mod:`emergence_lightning.paper` (the ``paper`` extra).
"""

from emergence_lightning.callbacks import EmergenceCallback, EmergenceRecord, PruneAndBranchCallback
from emergence_lightning.connectivity import ConnectivityError, build_edges, path_emergence
from emergence_lightning.functional import emergence, log10_emergence, relative_emergence
from emergence_lightning.measure import ActivityTracker, Measurement, measure_activity
from emergence_lightning.pruning import count_parameters

__all__ = [
    "EmergenceCallback",
    "EmergenceRecord",
    "PruneAndBranchCallback",
    "emergence",
    "relative_emergence",
    "log10_emergence",
    "count_parameters",
    "ActivityTracker",
    "Measurement",
    "measure_activity",
    "path_emergence",
    "build_edges",
    "ConnectivityError",
]
__version__ = "0.1.0"
