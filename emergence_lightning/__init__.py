"""Measure emergence while a PyTorch Lightning model trains.

Data modules, the paper's models, experiments and reports live in the submodules
``emergence_lightning.data``, ``.models``, ``.experiments`` and ``.report``.
"""

from emergence_lightning.callbacks import EmergenceCallback, EmergenceRecord, PruneAndBranchCallback
from emergence_lightning.connectivity import ConnectivityError, build_edges, path_emergence
from emergence_lightning.functional import emergence, log10_emergence, relative_emergence
from emergence_lightning.measure import ActivityTracker, Measurement, measure
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
    "measure",
    "path_emergence",
    "build_edges",
    "ConnectivityError",
]
__version__ = "0.1.0"
