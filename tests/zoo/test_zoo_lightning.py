"""Zoo models through a real `Trainer.fit` with `EmergenceCallback()` at defaults: a torchvision CNN
(logged layer names read back from TensorBoard), a LightningModule with no `forward` fed dict and
dataclass batches, and a Hugging Face BERT built from a tiny config fed `model(**batch)`.
"""

from __future__ import annotations

import dataclasses
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback


def fit(tmp_path, model, train, val, epochs=1, **trainer_kwargs):
    callback = EmergenceCallback()
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[callback], logger=TensorBoardLogger(tmp_path, name="run"),
        accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, **trainer_kwargs,
    )  # fmt: skip
    with warnings.catch_warnings():
        # Any warning of ours (a layer we could not decide, too few layers, E = 0 from one layer) fails.
        warnings.filterwarnings("error", module="emergence_lightning")
        warnings.filterwarnings("error", message=".*EmergenceCallback.*")
        trainer.fit(model, train, val)
    return trainer, callback


class ImageClassifier(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def images(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(samples, 3, 32, 32, generator=generator), torch.arange(samples) % 10)


def test_torchvision_resnet18_fit_logs_every_call_site_of_the_shared_relu(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = ImageClassifier(torchvision.models.resnet18(num_classes=10))
    train, val = DataLoader(images(8, 0), batch_size=4), DataLoader(images(4, 1), batch_size=4)
    trainer, callback = fit(tmp_path, model, train, val)
    expected = ["net.relu"]  # the module holds torchvision's model as `net`
    for stage in range(1, 5):
        for block in range(2):
            expected += [f"net.layer{stage}.{block}.relu", f"net.layer{stage}.{block}.relu-call2"]
    widths = [64] + [w for w in (64, 128, 256, 512) for _ in range(4)]
    assert [r["epoch"] for r in callback.history] == [0, 1]
    for record in callback.history:
        assert record["layers"] == expected and record["n"] == widths
        assert record["samples"] == 4 * 16 * 16  # the 4 validation images x the stem's 16 x 16 positions
    scalars = read_scalars(trainer.logger.log_dir)
    steps = [step for step, _ in sorted(scalars["emergence/log10_E"])]
    for name, n in zip(expected, widths):
        (step0, active0), (step1, active1) = sorted(scalars[f"emergence/active/{name}"])
        dead = dict(scalars[f"emergence/dead/{name}"])
        assert [step0, step1] == steps and step0 == 0  # beside the scalars `self.log` wrote
        assert active0 + dead[step0] == n and active1 + dead[step1] == n
    assert [v for _, v in sorted(scalars["emergence/log10_E"])] == pytest.approx(
        [r["log10_E"] for r in callback.history]
    )


@dataclasses.dataclass
class Batch:
    pixels: torch.Tensor
    label: torch.Tensor


def dict_batches(rows):
    return {"pixels": torch.stack([r[0] for r in rows]), "label": torch.stack([r[1] for r in rows])}


def dataclass_batches(rows):
    return Batch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))


class ConvNet(nn.Module):
    """Conv-BN with a module ReLU, a conv with a functional ReLU, a Linear with a functional GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()
        self.conv2 = nn.Conv2d(6, 10, 3, stride=2)
        self.fc, self.out = nn.Linear(10, 12), nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.out(F.gelu(self.fc(x.mean((2, 3)))))


class NoForward(pl.LightningModule):
    """Steps call `self.net` on the batch's fields; the module itself has no `forward`."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ConvNet()

    @staticmethod
    def fields(batch):
        return (batch["pixels"], batch["label"]) if isinstance(batch, dict) else (batch.pixels, batch.label)

    def training_step(self, batch, batch_idx):
        x, y = self.fields(batch)
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self.fields(batch)
        self.log("val_loss", F.cross_entropy(self.net(x), y), batch_size=len(y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("collate", [dict_batches, dataclass_batches], ids=["dict", "dataclass"])
def test_no_forward_module_with_dict_and_dataclass_batches(tmp_path, collate):
    torch.manual_seed(0)
    rows = list(zip(*images(12, 0).tensors))
    train = DataLoader(rows[:8], batch_size=4, collate_fn=collate)
    val = DataLoader(rows[8:], batch_size=2, collate_fn=collate)
    trainer, callback = fit(tmp_path, NoForward(), train, val, epochs=2)
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]
    for record in callback.history:
        assert record["layers"] == ["net.act1", "net.relu-fn", "net.gelu-fn"]
        assert record["n"] == [6, 10, 12]
    assert "val_loss" in trainer.callback_metrics


class BertClassifier(pl.LightningModule):
    """The usual Hugging Face recipe: batches are dicts of model keywords, steps call `model(**batch)`."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import BertForSequenceClassification

        self.model = BertForSequenceClassification(config)

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(**batch).loss, batch_size=len(batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def token_batches(samples: int, seed: int, vocab: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (samples, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[::2, 6:] = 0  # every other sequence padded
    labels = torch.arange(samples) % 3
    rows = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
    return DataLoader(rows, batch_size=4)  # the default collate keeps dicts


def test_hugging_face_bert_from_a_tiny_config_with_dict_batches(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=36,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    train, val = token_batches(8, 0, 60), token_batches(8, 1, 60)
    trainer, callback = fit(tmp_path, BertClassifier(config), train, val)
    # Per encoder layer, the intermediate GELU (HF's GELUActivation: no torch.nn activation class)
    # on 36 features (not the 9 tokens); then the pooler's tanh on the 16 hidden features.
    expected = [f"model.bert.encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(3)]
    expected.append("model.bert.pooler.activation")
    for record in callback.history:
        assert record["layers"] == expected and record["n"] == [36, 36, 36, 16]
    assert [r["epoch"] for r in callback.history] == [0, 1]


class MaskedEncoder(pl.LightningModule):
    """nn.TransformerEncoder fed a padding mask; in eval its fast path would use nested tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=40, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens, padding_mask):
        return self.head(self.encoder(self.embed(tokens), src_key_padding_mask=padding_mask).mean(1))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["tokens"], batch["padding_mask"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["tokens"], batch["padding_mask"]), batch["label"])
        self.log("val_loss", loss, batch_size=len(batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_transformer_encoder_with_a_padding_mask_through_a_fit(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (12, 7), generator=generator)
    mask = torch.zeros(12, 7, dtype=torch.bool)
    mask[::2, 5:] = True
    rows = [
        {"tokens": t, "padding_mask": m, "label": torch.tensor(i % 3)}
        for i, (t, m) in enumerate(zip(tokens, mask))
    ]
    torch.manual_seed(0)
    train, val = DataLoader(rows[:8], batch_size=4), DataLoader(rows[8:], batch_size=4)
    trainer, callback = fit(tmp_path, MaskedEncoder(), train, val)
    assert [r["epoch"] for r in callback.history] == [0, 1]
    for record in callback.history:
        assert record["layers"] == ["encoder.layers.0.relu-fn", "encoder.layers.1.relu-fn"]
        assert record["n"] == [40, 40] and record["samples"] == 4 * 7  # every position, padding included
