"""The README's monitoring recipe on a real torchvision CNN: EarlyStopping and ModelCheckpoint on
`emergence/log10_E`. E of mobilenet_v3_small is about 1e82: inf in float32 (TensorBoard, and
EarlyStopping's `check_finite` on a float32 value stops after one epoch), finite as log10(E + 1).
The stopping threshold 0.1 separates E = 0 (log10 1 = 0) from every E >= 1 (log10 2 = 0.301).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tiny_models import Classifier, loaders, mlp
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback

torchvision = pytest.importorskip("torchvision")
FLOAT32_MAX = torch.finfo(torch.float32).max


class ImageClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.mobilenet_v3_small(num_classes=10)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def images(samples: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(samples, 3, 32, 32, generator=generator), torch.arange(samples) % 10)
    return DataLoader(data, batch_size=8)


def test_early_stopping_and_checkpoint_on_log10_E_of_a_torchvision_cnn(tmp_path):
    torch.manual_seed(0)
    emergence = EmergenceCallback()
    # The README recipe: stop once E is 0 (log10(E + 1) < 0.1 only at E = 0), keep the lowest E.
    stopper = EarlyStopping(monitor="emergence/log10_E", mode="min", stopping_threshold=0.1, patience=1000)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="emergence/log10_E", mode="min")
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[emergence, stopper, checkpoint], accelerator="cpu",
        logger=TensorBoardLogger(tmp_path, name="run"), enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(ImageClassifier(), images(16, 0), images(8, 1))

    history = emergence.history
    assert all(record["E"] > FLOAT32_MAX for record in history)  # the case the recipe is for
    assert trainer.current_epoch == 3 and not stopper.stopped_epoch  # not stopped after one epoch
    trained = [record for record in history if not record["before_training"]]
    assert [record["epoch"] for record in trained] == [1, 2, 3]
    # The checkpoint kept the lowest log10 E seen, exactly (logged as float64), at that epoch.
    best = min(trained, key=lambda record: record["log10_E"])
    assert math.isfinite(float(checkpoint.best_model_score))
    assert float(checkpoint.best_model_score) == best["log10_E"]
    assert checkpoint.best_model_path.endswith(f"epoch={best['epoch'] - 1}-step={best['step']}.ckpt")
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    assert [r["E"] for r in saved["callbacks"][emergence.state_key]["history"]] == [
        r["E"] for r in history if r["epoch"] <= best["epoch"]
    ]
    # `self.log` kept E and E~ in float64: finite for monitors. What a float32 logger holds: E
    # overflows to inf, log10 E stays finite.
    for key in ("emergence/E", "emergence/relative"):
        assert trainer.callback_metrics[key].dtype == torch.float64
        assert float(trainer.callback_metrics[key]) == pytest.approx(float(history[-1][key.split("/")[1]]))
    scalars = read_scalars(trainer.logger.log_dir)
    assert all(math.isinf(value) for _, value in scalars["emergence/E"])
    assert [value for _, value in sorted(scalars["emergence/log10_E"])] == pytest.approx(
        [record["log10_E"] for record in history]
    )


def test_early_stopping_on_log10_E_stops_when_E_reaches_zero(tmp_path):
    # Every hidden node dead (a huge negative bias): E = 0 from the first epoch on.
    net = mlp(hidden=(6, 4))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.bias.fill_(-100.0)
    train, val = loaders()
    emergence = EmergenceCallback()
    stopper = EarlyStopping(monitor="emergence/log10_E", mode="min", stopping_threshold=0.1, patience=1000)
    trainer = pl.Trainer(
        max_epochs=10, callbacks=[emergence, stopper], logger=False, enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Classifier(net, lr=0.0), train, val)
    assert trainer.current_epoch == 1 and [r["E"] for r in emergence.history] == [0, 0]
