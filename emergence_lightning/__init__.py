"""Measure emergence while a PyTorch Lightning model trains."""

from emergence_lightning.activity import ActivityTracker, measure
from emergence_lightning.callbacks import EmergenceCallback
from emergence_lightning.functional import emergence, log10_emergence, relative_emergence
from emergence_lightning.pruning import count_parameters

__all__ = [
    "EmergenceCallback",
    "emergence",
    "relative_emergence",
    "log10_emergence",
    "count_parameters",
    "ActivityTracker",
    "measure",
]
__version__ = "0.1.0"
