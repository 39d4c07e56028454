"""The predictor study: train search spaces of small networks and judge scores at initialisation.

:mod:`.space` (search spaces), :mod:`.study_data`, :mod:`.training`, :mod:`.study`,
:mod:`.stopping`, :mod:`.analysis`, :mod:`.plots`, :mod:`.cli` (the ``rank`` and
``reproduce predictor`` commands). The scores themselves are the library's
:mod:`emergence_lightning.predictor`.
"""
