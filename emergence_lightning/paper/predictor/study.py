"""The study: every candidate x seed trained once, each run cached as a JSON file so a rerun resumes.

Runs go seed by seed, and within a seed in a fixed shuffled order, so a study cut short still
covers the whole search space (with fewer seeds) rather than its first families only.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emergence_lightning.paper.predictor.space import Candidate
from emergence_lightning.paper.predictor.study_data import StudyData
from emergence_lightning.paper.predictor.training import RunConfig, train_run

TrainRun = Callable[[Candidate, int, StudyData, RunConfig], dict[str, Any]]


def run_order(
    candidates: Sequence[Candidate], seeds: int, shuffle_seed: int = 0
) -> list[tuple[Candidate, int]]:
    """(candidate, seed) pairs: seed 0 for every candidate (shuffled), then seed 1, ..."""
    order = np.random.default_rng(shuffle_seed).permutation(len(candidates))
    return [(candidates[i], seed) for seed in range(seeds) for i in order]


def _cache_path(cache_dir: Path, candidate: Candidate, seed: int) -> Path:
    return cache_dir / f"{candidate.name}-seed{seed}.json"


def _load(path: Path, config: RunConfig, dataset: str) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("config") == config.key() and record.get("dataset") == dataset else None


def run_study(
    candidates: Sequence[Candidate],
    data: StudyData,
    config: RunConfig,
    seeds: int,
    cache_dir: str | os.PathLike,
    train: TrainRun = train_run,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs (or reloads) every candidate x seed; returns the run records in run order.

    Args:
        candidates: the search space.
        data: the study's tensors.
        config: the training and measurement settings (a cached run with other settings is redone).
        seeds: seeds 0..seeds-1 per candidate.
        cache_dir: one JSON file per run; finished runs are reused.
        train: trains one run (the default: :func:`train_run`).
        deadline: ``time.time()`` after which no new run starts (None: no limit); the records
            finished so far are returned.
        log: where progress lines go.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"`seeds` must be a positive int, got {seeds!r}.")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"Candidate names must be unique, got duplicates in {names}.")
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    order = run_order(candidates, seeds)
    for count, (candidate, seed) in enumerate(order, start=1):
        path = _cache_path(folder, candidate, seed)
        record = _load(path, config, data.name)
        if record is None:
            if deadline is not None and time.time() > deadline:
                log(f"deadline reached: {len(records)} of {len(order)} runs done")
                break
            record = train(candidate, seed, data, config)
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(record, allow_nan=True))
            partial.replace(path)  # a killed study never leaves a half-written run behind
            final = record["epochs"][config.budget_epochs]["val_acc"]
            log(
                f"[{count}/{len(order)}] {candidate.name} seed {seed}: acc {final:.3f} in {record['seconds']:.1f} s"
            )
        records.append(record)
    return records


def final_accuracy(record: dict[str, Any]) -> float:
    """Validation accuracy after the fixed budget."""
    return float(record["epochs"][record["config"]["budget_epochs"]]["val_acc"])


def proxy_values(record: dict[str, Any]) -> dict[str, float]:
    """Every proxy of a run, by the names used in tables: at init, after epoch 1 and its change."""
    init, first = record["init"], record["epochs"][1]
    return {
        "E at init": init["E"],
        "E~ at init": init["relative"],
        "log10 E at init": init["log10_E"],
        "E after epoch 1": first["E"],
        "change of E over epoch 1": first["E"] - init["E"],
        "change of log10 E over epoch 1": first["log10_E"] - init["log10_E"],
        "NASWOT": init["naswot"],
        "synflow": init["synflow"] if math.isfinite(init["synflow"]) else math.inf,
        "#params": init["params"],
    }
