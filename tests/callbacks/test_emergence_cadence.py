"""A measurement every N steps (or epochs) on a fixed probe set: for one-epoch pretraining runs."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny_models import Classifier, blobs, loaders, mlp
from torch.utils.data import DataLoader

from emergence_lightning import EmergenceCallback


def trainer(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


class SeenInputs:
    """A probe_step that runs the model and keeps every input it was given."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, module, batch):
        self.inputs.append(batch[0].clone())
        return module(batch[0])


def test_every_n_train_steps_measures_the_same_samples_logged_at_the_global_step(tmp_path):
    # No validation loop and a shuffling training loader: the probe set is drawn once from it.
    train = DataLoader(blobs(96), batch_size=8, shuffle=True)  # 12 steps in the epoch
    seen = SeenInputs()
    callback = EmergenceCallback(every_n_train_steps=4, probe_batches=2, probe_step=seen)
    logger = CSVLogger(tmp_path, name="", version="")
    trainer(tmp_path, [callback], logger=logger, log_every_n_steps=1).fit(Classifier(mlp()), train)
    assert [record.global_step for record in callback.history] == [0, 4, 8, 12]
    assert [record.samples for record in callback.history] == [16] * 4  # 2 batches of 8
    assert [record.epoch for record in callback.history][0] == 0 and callback.history[-1].epoch == 1
    probe_set = seen.inputs[:2]
    assert len(seen.inputs) == 8 and all(
        torch.equal(x, probe_set[i % 2]) for i, x in enumerate(seen.inputs)
    )  # every pass read the same two batches
    logged = (tmp_path / "metrics.csv").read_text().splitlines()
    header = logged[0].split(",")
    steps = [
        int(row.split(",")[header.index("step")])
        for row in logged[1:]
        if row.split(",")[header.index("emergence/E")]
    ]
    assert steps == [0, 4, 8, 12]


def test_every_n_epochs_draws_from_validation_and_bounds_the_pass(tmp_path):
    train, val = loaders(val_samples=40, batch_size=8)  # 5 validation batches, 2 drawn
    callback = EmergenceCallback(every_n_epochs=2, probe_batches=2)
    trainer(tmp_path, [callback], max_epochs=4).fit(Classifier(mlp()), train, val)
    assert [record.epoch for record in callback.history] == [0, 2, 4]
    assert {record.samples for record in callback.history} == {16}


def test_probe_batches_bounds_the_epoch_zero_pass_and_the_validation_runs(tmp_path):
    train, val = loaders(val_samples=40, batch_size=8)
    callback = EmergenceCallback(probe_batches=3)
    trainer(tmp_path, [callback], max_epochs=2).fit(Classifier(mlp()), train, val)
    assert [(record.epoch, record.samples) for record in callback.history] == [(0, 24), (1, 24), (2, 24)]


def test_resume_keeps_the_cadence_and_the_probe_set(tmp_path):
    train, val = loaders(samples=96, batch_size=8)  # 12 steps an epoch
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = EmergenceCallback(every_n_train_steps=5, probe_batches=2)
    trainer(tmp_path, [first, checkpoints], enable_checkpointing=True).fit(Classifier(mlp()), train, val)
    assert [record.global_step for record in first.history] == [0, 5, 10, 12]
    resumed = EmergenceCallback(every_n_train_steps=5, probe_batches=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="EmergenceCallback: (this resume|the probe set)")
        trainer(tmp_path, [resumed], max_epochs=2).fit(
            Classifier(mlp()), train, val, ckpt_path=str(tmp_path / "last.ckpt")
        )
    # last.ckpt is written at the epoch's end, before the final weights' measurement at step 12.
    assert [record.global_step for record in resumed.history] == [0, 5, 10, 15, 20, 24]
    assert {record.run for record in resumed.history} == {1}


def test_resume_whose_probe_set_changed_says_so(tmp_path):
    train = DataLoader(blobs(48), batch_size=8, shuffle=True)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = EmergenceCallback(every_n_train_steps=3, probe_batches=1)
    trainer(tmp_path, [first, checkpoints], enable_checkpointing=True).fit(Classifier(mlp()), train)
    with pytest.warns(UserWarning, match="the probe set drawn at this resume differs"):
        trainer(tmp_path, [EmergenceCallback(every_n_train_steps=3, probe_batches=1)], max_epochs=2).fit(
            Classifier(mlp()), train, ckpt_path=str(tmp_path / "last.ckpt")
        )
