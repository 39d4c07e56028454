"""The study end to end on a planted search space, and the stopping rules against Lightning's own."""

import csv
import json
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback
from emergence_lightning.paper.predictor.analysis import COLUMNS, correlation_table, write_tables
from emergence_lightning.paper.predictor.plots import scatter_grid
from emergence_lightning.paper.predictor.space import Candidate
from emergence_lightning.paper.predictor.stopping import (
    compare_rules,
    early_stopping_epoch,
    stop_at_zero_epoch,
)
from emergence_lightning.paper.predictor.study import run_study
from emergence_lightning.paper.predictor.study_data import StudyData
from emergence_lightning.paper.predictor.training import RunConfig
from emergence_lightning.predictor.stats import kendall_tau, spearman_rho

CLASSES = 4


class FirstClassesOnly(nn.Module):
    """Logits for the first ``k`` classes; every other class is kept 30 below the lowest of them."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        floor = logits.min(dim=1, keepdim=True).values.detach() - 30.0
        return torch.cat([logits, floor.expand(-1, CLASSES - self.k)], dim=1)


def planted_candidate(k: int) -> Candidate:
    # Only classes 0..k-1 can be predicted, so accuracy is at most k/4 (about k/4 once trained); the
    # model has 8*16+16 + 16*16+16 + 17k parameters, so #params ranks the four exactly as accuracy does.
    def build() -> nn.Module:
        layers = [nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, k)]
        return nn.Sequential(*layers, FirstClassesOnly(k))

    return Candidate(f"planted-k{k}", build, "mlp")


def planted_data(samples: int = 1200) -> StudyData:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    x = 0.3 * torch.randn(samples, 8, generator=generator)
    x[torch.arange(samples), labels] += 3.0  # an easy problem: the label's feature stands out
    x = x.view(samples, 1, 2, 4)
    cut = samples * 3 // 4
    return StudyData("planted", x[:cut], labels[:cut], x[cut:], labels[cut:])


# 8 NASWOT samples: with 32 hidden units a kernel of 128 samples would always be singular.
CONFIG = RunConfig(budget_epochs=2, max_epochs=3, batch_size=32, lr=1e-2, probe_samples=100, naswot_samples=8)


def test_planted_study_end_to_end(tmp_path):
    candidates = [planted_candidate(k) for k in (3, 1, 4, 2)]
    records = run_study(
        candidates, planted_data(), CONFIG, seeds=1, cache_dir=tmp_path / "runs", log=lambda s: None
    )
    accuracy = {r["name"]: r["epochs"][2]["val_acc"] for r in records}
    for k in range(1, 5):  # the planted ceiling of each architecture, reached by training
        assert (k - 0.6) / CLASSES < accuracy[f"planted-k{k}"] <= k / CLASSES + 0.05
    rows = correlation_table(records, resamples=50)
    assert [row["proxy"] for row in rows] == [
        "E at init", "E~ at init", "log10 E at init", "E after epoch 1", "change of E over epoch 1",
        "change of log10 E over epoch 1", "NASWOT", "synflow", "#params",
    ]  # fmt: skip
    params = rows[-1]
    assert params["kendall_tau"] == pytest.approx(1.0) and params["spearman_rho"] == pytest.approx(1.0)
    # Every correlation is the one computed from the cached run files, read back independently.
    cached = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert len(cached) == 4
    accuracies = [c["epochs"][c["config"]["budget_epochs"]]["val_acc"] for c in cached]
    read_back = {
        "NASWOT": [c["init"]["naswot"] for c in cached],  # may be -inf: codes of a class coincide here
        "synflow": [c["init"]["synflow"] for c in cached],
        "E after epoch 1": [c["epochs"][1]["E"] for c in cached],
    }
    assert len(set(read_back["synflow"])) == 4  # the last layer differs, so synflow does
    for proxy, values in read_back.items():
        row = next(r for r in rows if r["proxy"] == proxy)
        assert row["kendall_tau"] == pytest.approx(kendall_tau(values, accuracies), nan_ok=True), proxy
        assert row["spearman_rho"] == pytest.approx(spearman_rho(values, accuracies), nan_ok=True), proxy
    paths = write_tables(tmp_path / "out", rows, {"all runs": compare_rules(records)}, records)
    with paths["correlations_csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 9 and tuple(table[0]) == COLUMNS
    assert paths["correlations_md"].read_text().count("\n") == 2 + 9
    with paths["runs_csv"].open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    figure = scatter_grid(records, rows, tmp_path / "out" / "scatter.png")
    assert figure.stat().st_size > 10_000


def test_a_rerun_reuses_cached_runs_and_redoes_runs_of_other_settings(tmp_path):
    calls = []

    def counting_train(candidate, seed, data, config):
        calls.append((candidate.name, seed))
        from emergence_lightning.paper.predictor.training import train_run

        return train_run(candidate, seed, data, config)

    candidates = [planted_candidate(k) for k in (1, 2)]
    data = planted_data(400)
    run_study(candidates, data, CONFIG, 2, tmp_path, train=counting_train, log=lambda s: None)
    assert sorted(calls) == [("planted-k1", 0), ("planted-k1", 1), ("planted-k2", 0), ("planted-k2", 1)]
    run_study(candidates, data, CONFIG, 2, tmp_path, train=counting_train, log=lambda s: None)
    assert len(calls) == 4  # all four reloaded
    other = RunConfig(
        budget_epochs=1, max_epochs=2, batch_size=32, lr=1e-2, probe_samples=100, naswot_samples=8
    )
    run_study(candidates, data, other, 1, tmp_path, train=counting_train, log=lambda s: None)
    assert len(calls) == 6
    with pytest.raises(ValueError, match="`seeds` must be a positive int, got 0"):
        run_study(candidates, data, CONFIG, 0, tmp_path)


def test_stopping_rules_by_hand():
    assert stop_at_zero_epoch([3, 0, 2, 0]) == 2
    assert stop_at_zero_epoch([3, 0, 2, 0, 0], patience=1) == 5
    assert stop_at_zero_epoch([3, 1, 2]) is None
    assert early_stopping_epoch([1.0, 0.9, 0.95, 0.92, 0.91]) == 5  # three epochs without beating 0.9
    assert early_stopping_epoch([1.0, 0.9, 0.8, 0.7]) is None
    assert early_stopping_epoch([1.0, math.nan]) == 2
    run = {"epochs": [{"E": 5, "val_loss": 2.0, "val_acc": 0.1}]
           + [{"E": E, "val_loss": loss, "val_acc": acc} for E, loss, acc in
              [(4, 1.0, 0.5), (0, 0.9, 0.6), (0, 0.95, 0.62), (0, 0.96, 0.63), (0, 0.97, 0.64), (0, 0.98, 0.7)]]}  # fmt: skip
    summary = compare_rules([run])
    # stop_at_zero stops after epoch 2 (acc 0.6): 4 epochs saved, 10 points lost of the final 0.7.
    assert summary["stop_at_zero"]["epochs_saved_mean"] == 4
    assert summary["stop_at_zero"]["accuracy_lost_mean"] == pytest.approx(0.1)
    # EarlyStopping: best 0.9 at epoch 2, three worse epochs -> stops after epoch 5 (acc 0.64).
    assert summary["early_stopping"]["epochs_saved_mean"] == 1
    assert summary["early_stopping"]["accuracy_lost_mean"] == pytest.approx(0.06)
    assert summary["E_never_zero"] == 0 and summary["E_zero_at_init"] == 0


class _Recorder(pl.Callback):
    def __init__(self) -> None:
        self.val_loss: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_loss.append(float(trainer.callback_metrics["val_loss"]))


class _Memoriser(pl.LightningModule):
    """Learns random labels: validation loss soon rises, so EarlyStopping has something to stop."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        layers = [nn.Linear(6, 32), nn.ReLU()] + [nn.Linear(32, 32), nn.ReLU()] * (depth - 1)
        self.net = nn.Sequential(*layers, nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def _loaders():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    return DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16), DataLoader(
        TensorDataset(x[48:], y[48:]), batch_size=16
    )


def _trainer(callbacks, epochs=15):
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip


def test_early_stopping_epoch_agrees_with_lightning():
    torch.manual_seed(0)
    train, val = _loaders()
    recorder = _Recorder()
    trainer = _trainer([EarlyStopping(monitor="val_loss", patience=3), recorder])
    trainer.fit(_Memoriser(depth=2), train, val)
    stopped = early_stopping_epoch(recorder.val_loss, patience=3)
    assert stopped is not None and stopped < 15  # Lightning stopped early, at the epoch the rule names
    assert trainer.current_epoch == stopped == len(recorder.val_loss)


def test_stop_at_zero_epoch_agrees_with_emergence_callback():
    torch.manual_seed(0)
    train, val = _loaders()
    callback = EmergenceCallback(stop_at_zero=True, patience=1)
    trainer = _trainer([callback], epochs=8)
    # One hidden layer: no dead node precedes an active one, so E = 0 at every measurement.
    with pytest.warns(UserWarning, match="E is already 0 before training"):
        trainer.fit(_Memoriser(depth=1), train, val)
    E = [
        record["E"] for record in callback.history if not record.get("before_training", record["epoch"] == 0)
    ]
    assert stop_at_zero_epoch(E, patience=1) == trainer.current_epoch == 2
