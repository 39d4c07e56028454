"""Score a network without training it: emergence at initialisation beside the zero-cost baselines.

Pure tier (no Lightning). E comes from the project's own tracker
(:func:`emergence_lightning.measure.measure_activity`) and formula (:mod:`emergence_lightning.functional`);
the baselines from :mod:`emergence_lightning.predictor.proxies`.

Example::

    scores = score_at_init(model, [x[:256] for x, _ in loader][:4])
    scores.E, scores.relative, scores.log10_E, scores.layer_fractions
    ranked = rank_models({"a": net_a, "b": net_b}, batches, by="log10_E")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from emergence_lightning.functional import emergence, emergence_as_float, log10_emergence, relative_emergence
from emergence_lightning.measure import measure_activity
from emergence_lightning.measure.batches import batch_input
from emergence_lightning.predictor.proxies import naswot, synflow
from emergence_lightning.pruning import count_parameters

# Every score a model can be ranked by; higher is "predicted better" for each.
SCORES = ("E", "relative", "log10_E", "naswot", "synflow", "params")


@dataclass
class EmergenceScore:
    """Emergence of one model on a few batches (untrained, or at any point)."""

    E: int
    relative: float  # E / #params
    log10_E: float  # log10(E + 1)
    num_parameters: int
    active_fraction: float  # over all tracked nodes
    layer_fractions: dict[str, float]  # active fraction of each tracked layer, forward order
    n: list[int] = field(default_factory=list)
    a: list[int] = field(default_factory=list)


def score_at_init(
    model: nn.Module,
    batches: Iterable[object],
    threshold: float = 0.05,
    variant: str = "paper",
    **tracker_kwargs: object,
) -> EmergenceScore:
    """E, E~, log10 E and per-layer active fractions of ``model`` on ``batches``.

    The model runs in eval mode without gradients (modes restored), as
    :func:`emergence_lightning.measure.measure_activity` runs it; a node is active when its activity (the
    tracker's ``statistic``, by default :data:`~emergence_lightning.measure.statistics.DEFAULT_STATISTIC`)
    exceeds ``threshold`` (the paper's 0.05).

    Args:
        model: any ``nn.Module`` whose activations the tracker finds.
        batches: model inputs, or ``(inputs, targets)`` pairs as a DataLoader yields them.
        threshold: the activity threshold theta.
        variant: ``"paper"`` or ``"induced"`` (see :func:`emergence_lightning.emergence`).
        **tracker_kwargs: passed on to :class:`emergence_lightning.ActivityTracker`.

    Raises:
        ValueError: ``batches`` is empty, or the model has no parameters to divide E by.
    """
    if isinstance(batches, Tensor):
        raise TypeError("`batches` must be an iterable of batches (e.g. `[x]` for one batch), got a tensor.")
    measurement = measure_activity(model, batches, threshold=threshold, **tracker_kwargs)
    if measurement is None:
        raise ValueError("`batches` gave no samples: pass at least one non-empty batch.")
    num_parameters = count_parameters(model)
    if num_parameters == 0:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters, so E~ = E / #params is undefined."
        )
    E = emergence(measurement.n, measurement.a, variant=variant)
    return EmergenceScore(
        E=E,
        relative=relative_emergence(E, num_parameters),
        log10_E=log10_emergence(E),
        num_parameters=num_parameters,
        active_fraction=measurement.active_fraction,
        layer_fractions={layer.name: layer.a / layer.n for layer in measurement.layers},
        n=list(measurement.n),
        a=list(measurement.a),
    )


def proxy_scores(
    model: nn.Module,
    batches: Sequence[object],
    input_shape: Sequence[int] | None = None,
    threshold: float = 0.05,
    naswot_samples: int = 128,
) -> dict[str, float]:
    """Every score in :data:`SCORES` for one model (E as a float; ``inf`` beyond float range).

    NASWOT reads the first ``naswot_samples`` inputs of the first batch; SynFlow uses an all-ones
    input of ``input_shape`` (default: the shape of one input of the first batch).
    """
    if not batches:
        raise ValueError("`batches` must hold at least one batch.")
    first = batch_input(batches[0])
    if not isinstance(first, Tensor):
        raise TypeError(f"proxy_scores needs tensor inputs, got {type(first).__name__}.")
    emergence_score = score_at_init(model, batches, threshold=threshold)
    shape = tuple(input_shape) if input_shape is not None else tuple(first.shape[1:])
    return {
        "E": emergence_as_float(emergence_score.E),
        "relative": emergence_score.relative,
        "log10_E": emergence_score.log10_E,
        "naswot": naswot(model, first[:naswot_samples]),
        "synflow": synflow(model, shape),
        "params": float(emergence_score.num_parameters),
    }


@dataclass
class RankedModel:
    """One candidate of :func:`rank_models`: its rank (1 = predicted best), name and every score."""

    rank: int
    name: str
    scores: dict[str, float]


def rank_models(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    batches: Sequence[object],
    by: str = "log10_E",
    input_shape: Sequence[int] | None = None,
    threshold: float = 0.05,
    seed: int | None = 0,
) -> list[RankedModel]:
    """Scores each candidate and sorts them by ``by``, highest first (ties keep the given order).

    Args:
        models: candidates by name, or a list (named ``<class>-<index>``).
        batches: model inputs (a few batches; see :func:`score_at_init`).
        by: one of :data:`SCORES`.
        input_shape: one sample's shape for SynFlow (default: from the first batch).
        threshold: the activity threshold theta.
        seed: seeds torch before each model is scored (NASWOT and E are deterministic given the weights).
    """
    if by not in SCORES:
        raise ValueError(f"`by` must be one of {SCORES}, got {by!r}.")
    named = (
        dict(models)
        if isinstance(models, Mapping)
        else {f"{type(m).__name__}-{i}": m for i, m in enumerate(models)}
    )
    if not named:
        raise ValueError("`models` is empty: give at least one candidate.")
    for name, model in named.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"Candidate {name!r} must be a torch.nn.Module, got {type(model).__name__}.")
    scored = []
    for name, model in named.items():
        if seed is not None:
            torch.manual_seed(seed)
        scored.append((name, proxy_scores(model, batches, input_shape, threshold)))
    order = sorted(range(len(scored)), key=lambda i: -scored[i][1][by])
    return [RankedModel(rank + 1, scored[i][0], scored[i][1]) for rank, i in enumerate(order)]
