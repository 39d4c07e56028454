"""One run of the study: proxies at initialisation, then a plain training loop measured every epoch.

Plain PyTorch on purpose (Lightning is not what this study tests, and 100+ short runs on a CPU
pay for every per-step overhead); E still comes from the project's tracker through
:func:`emergence_lightning.predictor.score.score_at_init`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from emergence_lightning.functional import emergence_as_float
from emergence_lightning.measure.statistics import DEFAULT_STATISTIC
from emergence_lightning.paper.predictor.space import Candidate
from emergence_lightning.paper.predictor.study_data import StudyData
from emergence_lightning.predictor.proxies import naswot, synflow
from emergence_lightning.predictor.score import score_at_init
from emergence_lightning.pruning import count_parameters


@dataclass(frozen=True)
class RunConfig:
    """How every run of a study trains and is measured (a cached run is reused only if these match)."""

    budget_epochs: int = 3  # the fixed budget: "final accuracy" is the validation accuracy after it
    max_epochs: int = 10  # the longer budget on which the stopping rules are compared
    batch_size: int = 64
    lr: float = 1e-3  # Adam: trains deep Tanh/GELU nets at PyTorch's default init, where SGD stalls
    threshold: float = 0.05  # the paper's theta
    statistic: str = (
        DEFAULT_STATISTIC  # what a node's activity is (a cached run is reused only if it matches)
    )
    probe_samples: int = 1000  # validation images E is measured on, every epoch
    naswot_samples: int = 128  # the NASWOT paper's batch size
    train_size: int | None = None  # None: the whole training split

    def __post_init__(self) -> None:
        for key in ("budget_epochs", "max_epochs", "batch_size", "probe_samples", "naswot_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key}` must be a positive int, got {value!r}.")
        if self.budget_epochs > self.max_epochs:
            raise ValueError(
                f"`budget_epochs` ({self.budget_epochs}) must not exceed `max_epochs` ({self.max_epochs})."
            )
        if self.train_size is not None and (
            isinstance(self.train_size, bool) or not isinstance(self.train_size, int) or self.train_size < 1
        ):
            raise ValueError(f"`train_size` must be a positive int or None, got {self.train_size!r}.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}.")

    def key(self) -> dict[str, Any]:
        return asdict(self)


def _evaluate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``x, y``; a non-finite loss stays NaN/inf (a diverged run)."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            logits = model(x[start : start + chunk])
            target = y[start : start + chunk]
            loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    return loss / len(x), correct / len(x)


def _emergence(model: nn.Module, probe: list[Tensor], config: RunConfig) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = score_at_init(model, probe, threshold=config.threshold, statistic=config.statistic)
    return {
        "E": emergence_as_float(score.E),
        "E_is_zero": score.E == 0,
        "relative": score.relative,
        "log10_E": score.log10_E,
        "active_fraction": score.active_fraction,
        "layer_fractions": score.layer_fractions,
        "warnings": sorted({str(w.message)[:200] for w in caught}),
    }


def train_run(candidate: Candidate, seed: int, data: StudyData, config: RunConfig) -> dict[str, Any]:
    """Builds ``candidate`` under ``seed``, scores it at init, trains ``max_epochs`` epochs, measuring each.

    Returns a JSON-able record: the proxies at init, and per epoch (0 = init) E, log10 E,
    validation loss and accuracy, and the training loss.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = candidate.build()
    probe_x = data.x_val[: config.probe_samples]
    probe = [probe_x[i : i + 250] for i in range(0, len(probe_x), 250)]
    init = _emergence(model, probe, config)
    init["naswot"] = naswot(model, data.x_val[: config.naswot_samples])
    init["synflow"] = synflow(model, data.input_shape)
    init["params"] = float(count_parameters(model))
    val_loss, val_acc = _evaluate(model, data.x_val, data.y_val)
    epochs = [{"epoch": 0, "E": init["E"], "log10_E": init["log10_E"], "E_is_zero": init["E_is_zero"],
               "val_loss": val_loss, "val_acc": val_acc, "train_loss": math.nan}]  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        total, batches = 0.0, 0
        for index in torch.randperm(len(data.x_train), generator=order).split(config.batch_size):
            loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        val_loss, val_acc = _evaluate(model, data.x_val, data.y_val)
        measured = _emergence(model, probe, config)
        epochs.append({
            "epoch": epoch, "E": measured["E"], "log10_E": measured["log10_E"], "E_is_zero": measured["E_is_zero"],
            "val_loss": val_loss, "val_acc": val_acc, "train_loss": total / batches,
        })  # fmt: skip
    return {
        "name": candidate.name,
        "family": candidate.family,
        "seed": seed,
        "dataset": data.name,
        "config": config.key(),
        "init": init,
        "epochs": epochs,
        "seconds": time.perf_counter() - started,
    }
