"""The measure's pure tier: layers and nodes, per-node activity, the compile guard. No Lightning."""

from emergence_lightning.measure.arguments import check_flags, check_tracking_arguments
from emergence_lightning.measure.batches import measure_activity
from emergence_lightning.measure.layers import INPUT_LAYER, OUTPUT_LAYER, parametrised_leaves
from emergence_lightning.measure.measurement import LayerActivity, Measurement
from emergence_lightning.measure.tracker import ActivityTracker

__all__ = [
    "INPUT_LAYER",
    "OUTPUT_LAYER",
    "ActivityTracker",
    "LayerActivity",
    "Measurement",
    "check_flags",
    "check_tracking_arguments",
    "measure_activity",
    "parametrised_leaves",
]
