"""A mixture-of-experts layer's per-expert active counts and idle experts reach the loggers, in the one record
of each measurement: real ``Trainer.fit`` runs of a plain-PyTorch top-k MoE whose experts' active units are
planted, read back from real TensorBoard event files and a real CSVLogger ``metrics.csv``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tb import read_scalars
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback
from emergence_lightning.callbacks.emergence_record import EmergenceRecord

WIDTH, HIDDEN, CLASSES, TOKENS = 8, 10, 3, 5
PLANTED = [
    3,
    7,
    10,
]  # expert e: units j < PLANTED[e] output ReLU(1) = 1 on every token, the others ReLU(0) = 0
EXPERTS_LAYER = "moe.experts.each.act"  # the ReLU inside each expert, the expert's index left out
KEY = re.compile(r"^[A-Za-z0-9_\-./]+$")  # what every logger keeps unchanged


class Expert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(WIDTH, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, WIDTH)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class TopKMoE(nn.Module):
    """Top-2 of 3 experts in an ``nn.ModuleList``, a loop over the experts that got tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(WIDTH, len(PLANTED))
        self.experts = nn.ModuleList(Expert() for _ in PLANTED)

    def forward(self, h, route_by):
        tokens, keys = h.reshape(-1, WIDTH), route_by.reshape(-1, WIDTH)
        weights, chosen = self.router(keys).softmax(-1).topk(2, dim=-1)
        out = torch.zeros_like(tokens)
        for index, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == index)
            if len(rows):
                out[rows] += weights[rows, slot, None] * expert(tokens[rows])
        return out.view_as(h)


class PlantedMoE(pl.LightningModule):
    """An ordinary ReLU layer, then the MoE. The router reads the raw token: feature ``t % 3`` of token ``t``
    is 1, so expert ``t % 3`` is every such token's first choice (``idle`` sends no token to expert 2). The
    router and the experts' ``up`` maps are frozen, so training leaves the planted counts as they are.
    """

    def __init__(self, idle: bool = False) -> None:
        super().__init__()
        self.embed, self.act, self.moe, self.head = (
            nn.Linear(WIDTH, WIDTH),
            nn.ReLU(),
            TopKMoE(),
            nn.Linear(WIDTH, 3),
        )
        with torch.no_grad():
            self.moe.router.weight.zero_()
            self.moe.router.bias.copy_(torch.tensor([0.0, 0.0, -100.0 if idle else 0.0]))
            for expert, count in enumerate(PLANTED):
                self.moe.router.weight[expert, expert] = 10.0
                up = self.moe.experts[expert].up
                up.weight.zero_()
                up.bias.zero_()
                up.bias[:count] = 1.0
        self.moe.router.requires_grad_(False)
        for expert in self.moe.experts:
            expert.up.requires_grad_(False)

    def forward(self, x):  # x: (batch, TOKENS, WIDTH)
        return self.head(self.moe(self.act(self.embed(x)), route_by=x).mean(1))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


def _loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(12, TOKENS, WIDTH, generator=generator)
    x[:, torch.arange(TOKENS), torch.arange(TOKENS) % len(PLANTED)] = 1.0
    data = TensorDataset(x, torch.arange(12) % CLASSES)
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)


def _fit(tmp_path: Path, loggers: list, idle: bool = False, max_epochs: int = 2) -> EmergenceCallback:
    torch.manual_seed(0)
    callback = EmergenceCallback()
    trainer = pl.Trainer(
        max_epochs=max_epochs, callbacks=[callback], logger=loggers, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(PlantedMoE(idle), *_loaders())
    return callback


def _csv_rows(path: Path) -> list[dict[str, float]]:
    with open(path) as file:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]


def _expert_keys(counts: list[int]) -> dict[str, float]:
    return {f"emergence/expert_active/{EXPERTS_LAYER}/{e}": float(a) for e, a in enumerate(counts)}


def test_per_expert_counts_and_idle_experts_reach_tensorboard_and_csv_in_each_record(tmp_path):
    callback = _fit(
        tmp_path,
        [
            TensorBoardLogger(str(tmp_path / "tb"), name="", version=""),
            CSVLogger(str(tmp_path / "csv"), name="", version=""),
        ],
    )
    measurements = 3  # before training, after epochs 1 and 2
    expected = {**_expert_keys(PLANTED), f"emergence/idle_experts/{EXPERTS_LAYER}": 0.0}

    # CSV: the experts' keys in the same row as E and Lightning's epoch, one row per measurement.
    rows = _csv_rows(tmp_path / "csv" / "metrics.csv")
    measured = [row for row in rows if "emergence/E" in row]
    assert len(measured) == measurements
    assert [row["emergence/epoch"] for row in measured] == [0, 1, 2]
    for row in measured:
        assert "epoch" in row
        assert {key: row[key] for key in expected} == expected
        assert row[f"emergence/active/{EXPERTS_LAYER}"] == sum(PLANTED)  # the layer: all experts' units
        assert row[f"emergence/dead/{EXPERTS_LAYER}"] == len(PLANTED) * HIDDEN - sum(PLANTED)
    logged = {key for row in measured for key in row if key.startswith("emergence/")}
    per_expert = {
        key for key in logged if key.startswith(("emergence/expert_active/", "emergence/idle_experts/"))
    }
    assert per_expert == expected.keys()  # none for the ordinary layer `act`
    assert all(KEY.match(key) for key in logged)
    # Nothing that reads `/active/<layer>` as a layer's count finds an expert there.
    assert {
        key.removeprefix("emergence/active/") for key in logged if key.startswith("emergence/active/")
    } == {
        "act",
        EXPERTS_LAYER,
    }

    # TensorBoard: each expert's series has every measurement, at the steps E has.
    scalars = read_scalars(tmp_path / "tb")
    steps_of_E = [step for step, _ in scalars["emergence/E"]]
    assert len(steps_of_E) == measurements
    for key, value in expected.items():
        assert scalars[key] == [(step, value) for step in steps_of_E]

    # The typed records and a checkpoint's history hold them too.
    for record in callback.records():
        assert record.expert_active == {EXPERTS_LAYER: tuple(PLANTED)}
        assert record.idle_experts == {EXPERTS_LAYER: ()}
    restored = EmergenceCallback()
    restored.load_state_dict(callback.state_dict())
    assert restored.records() == callback.records()


def test_an_expert_that_got_no_token_is_counted_in_the_logged_record(tmp_path):
    with pytest.warns(
        RuntimeWarning, match=rf"^Layer '{re.escape(EXPERTS_LAYER)}': experts \[2\] of 3 got no token"
    ):
        callback = _fit(
            tmp_path, [CSVLogger(str(tmp_path / "csv"), name="", version="")], idle=True, max_epochs=1
        )
    measured = [row for row in _csv_rows(tmp_path / "csv" / "metrics.csv") if "emergence/E" in row]
    assert len(measured) == 2  # before training, after the epoch
    for row in measured:
        # Expert 2 saw no token: none of its units is observed active, and the row says so.
        assert {key: row[key] for key in _expert_keys([3, 7, 0])} == _expert_keys([3, 7, 0])
        assert row[f"emergence/idle_experts/{EXPERTS_LAYER}"] == 1.0
        assert row[f"emergence/active/{EXPERTS_LAYER}"] == 3 + 7
    assert [record.idle_experts for record in callback.records()] == [{EXPERTS_LAYER: (2,)}] * 2


def test_a_record_without_experts_has_no_expert_fields():
    # A history entry of a model without experts, or of a checkpoint written before these fields.
    entry = {
        "epoch": 1,
        "step": 6,
        "E": 4,
        "log10_E": 0.7,
        "relative": 0.1,
        "layers": ["a"],
        "n": [4],
        "a": [2],
    }
    record = EmergenceRecord.from_history(entry)
    assert record.expert_active == {} and record.idle_experts == {}
