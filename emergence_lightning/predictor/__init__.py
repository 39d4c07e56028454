"""Is emergence a predictor? Score untrained networks, and judge the scores as zero-cost proxies are.

Pure tier (no Lightning): :mod:`.score` (E, E~, log10 E at initialisation; rank candidates),
:mod:`.proxies` (NASWOT, SynFlow), :mod:`.stats` (Kendall, Spearman, bootstrap). The study that
trains search spaces and judges these scores is :mod:`emergence_lightning.paper.predictor`.
"""

from emergence_lightning.predictor.proxies import binary_codes, hamming_kernel, naswot, synflow
from emergence_lightning.predictor.score import (
    SCORES,
    EmergenceScore,
    RankedModel,
    proxy_scores,
    rank_models,
    score_at_init,
)
from emergence_lightning.predictor.stats import bootstrap_ci, kendall_tau, rankdata, spearman_rho

__all__ = [
    "SCORES",
    "EmergenceScore",
    "RankedModel",
    "binary_codes",
    "bootstrap_ci",
    "hamming_kernel",
    "kendall_tau",
    "naswot",
    "proxy_scores",
    "rank_models",
    "rankdata",
    "score_at_init",
    "spearman_rho",
    "synflow",
]
