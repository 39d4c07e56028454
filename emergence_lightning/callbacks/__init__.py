"""Lightning callbacks: thin glue around the pure measure."""

from emergence_lightning.callbacks.emergence import EmergenceCallback

__all__ = ["EmergenceCallback"]
