"""Moved to :mod:`emergence_lightning.measure`; kept while the callbacks switch their imports."""

from emergence_lightning.measure import *  # noqa: F403
from emergence_lightning.measure import __all__  # noqa: F401
