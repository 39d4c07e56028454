"""The passes EmergenceCallback drives itself (epoch 0, probe data) on modules with no forward and odd batches."""

import dataclasses
import math

import lightning.pytorch as pl
import pytest
import torch
import torchmetrics
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tiny_models import blobs, mlp
from torch import nn
from torch.utils.data import DataLoader

from emergence_lightning import EmergenceCallback


@dataclasses.dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def collate_dicts(rows):
    return {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}


def collate_dataclass(rows):
    return Batch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))


class NoForward(pl.LightningModule):
    """Steps call `self.net` on `batch['x']` / `batch.x`; no `forward`; a torchmetrics accuracy and a list of outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = mlp()
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=3)
        self.outputs = []
        self.val_steps = 0

    @staticmethod
    def unpack(batch):
        return (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch.x, batch.y)

    def training_step(self, batch, batch_idx):
        x, y = self.unpack(batch)
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self.unpack(batch)
        logits = self.net(x)
        self.val_steps += 1
        self.outputs.append(logits.sum().item())
        self.accuracy(logits, y)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", self.accuracy)

    def on_validation_epoch_end(self):
        self.log("val_outputs", float(len(self.outputs)))
        self.outputs.clear()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, collate, measure=True, **callback_kwargs):
    train = DataLoader(list(zip(*blobs(48).tensors)), batch_size=16, collate_fn=collate)
    val = DataLoader(list(zip(*blobs(32, seed=1).tensors)), batch_size=16, collate_fn=collate)
    callbacks = [EmergenceCallback(**callback_kwargs)] if measure else []
    trainer = pl.Trainer(
        max_epochs=2, callbacks=callbacks, logger=TensorBoardLogger(tmp_path, name="run"), accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
    )  # fmt: skip
    model = NoForward()
    trainer.fit(model, train, val)
    return trainer, model, callbacks[0] if callbacks else None


@pytest.mark.parametrize("collate", [collate_dicts, collate_dataclass], ids=["dict", "dataclass"])
def test_no_forward_and_odd_batches_are_measured_through_validation_step(tmp_path, collate):
    trainer, model, callback = fit(tmp_path, collate)
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]
    assert callback.history[0]["layers"] == ["net.1", "net.3"] and callback.history[0]["n"] == [16, 12]
    assert callback.history[0]["samples"] == 32  # the whole validation set
    assert model.val_steps == 2 * 2  # two validation epochs of two batches: the epoch-0 pass is undone


def test_epoch_zero_pass_disturbs_no_logged_metric(tmp_path):
    # The same run with and without the callback: every metric the module logs must be identical.
    with_callback, *_ = fit(tmp_path / "with", collate_dicts)
    without, *_ = fit(tmp_path / "without", collate_dicts, measure=False)
    for key in ("val_loss", "val_acc", "val_outputs"):
        assert float(with_callback.callback_metrics[key]) == float(without.callback_metrics[key]), key
    assert float(with_callback.callback_metrics["val_outputs"]) == 2.0  # the epoch-0 pass appended nothing
    logged, reference = read_scalars(with_callback.logger.log_dir), read_scalars(without.logger.log_dir)
    for key in ("val_loss", "val_acc", "val_outputs"):
        assert logged[key] == reference[key], key


def test_probe_dataloader_of_dicts_without_probe_step(tmp_path):
    probe = DataLoader(list(zip(*blobs(24, seed=2).tensors)), batch_size=8, collate_fn=collate_dicts)
    trainer, model, callback = fit(tmp_path, collate_dicts, probe_dataloader=probe)
    assert [r["samples"] for r in callback.history] == [24, 24, 24]
    assert not math.isnan(callback.history[-1]["log10_E"])


def test_probe_step_still_overrides(tmp_path):
    calls = []

    def probe_step(module, batch):
        calls.append(type(batch).__name__)
        module.net(batch["x"])

    fit(tmp_path, collate_dicts, probe_step=probe_step)
    assert calls == ["dict", "dict"]  # the epoch-0 pass over two validation batches
