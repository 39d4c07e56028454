"""Lightning schedules: what EmergenceCallback measures, on which data, at which epochs.

Each test runs a real Trainer on a tiny MLP and recomputes every recorded E independently from a
copy of the weights taken at the same moment (per-node means by hand, paths counted by brute force).
"""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers.oracle import emergence_oracle
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tiny_models import Classifier, loaders, mlp
from torch import nn

from emergence_lightning import EmergenceCallback

TRAIN_SAMPLES, VAL_SAMPLES, BATCH = 96, 40, 16  # 6 training batches an epoch


class Snapshots(Callback):
    """A copy of the net wherever the callback may measure: start, each validation end, train end."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, nn.Module]] = []
        self.trained_while_attached = 0

    def _take(self, trainer, pl_module):
        self.taken.append((trainer.global_step, copy.deepcopy(pl_module.net).eval()))

    def on_train_start(self, trainer, pl_module):
        self._take(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._take(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._take(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        emergence = next(c for c in trainer.callbacks if isinstance(c, EmergenceCallback))
        self.trained_while_attached += emergence.tracker.attached

    def at(self, step: int) -> nn.Module:
        return [net for s, net in self.taken if s == step][-1]


def independent_E(net: nn.Sequential, loader, threshold: float = 0.05) -> int:
    """Per-node means of each ReLU output over every batch of ``loader``; paths by brute force."""
    sums: dict[int, torch.Tensor] = {}
    count = 0
    with torch.no_grad():
        for x, _ in loader:
            h, count = x, count + len(x)
            for index, layer in enumerate(net):
                h = layer(h)
                if isinstance(layer, nn.ReLU):
                    sums[index] = sums.get(index, 0) + h.double().sum(0)
    n = [int(s.numel()) for s in sums.values()]
    a = [int((s / count > threshold).sum()) for s in sums.values()]
    return emergence_oracle(n, a)


def run(tmp_path, val=True, **trainer_kwargs):
    torch.manual_seed(0)
    net = mlp(hidden=(24, 16, 12))
    with torch.no_grad():  # a few dead nodes in every layer, so E is not trivially 0
        for layer in [m for m in net if isinstance(m, nn.Linear)][:-1]:
            layer.bias[: layer.bias.numel() // 3] = -3.0
    train, val_loader = loaders(samples=TRAIN_SAMPLES, val_samples=VAL_SAMPLES, batch_size=BATCH)
    snapshots, callback = Snapshots(), EmergenceCallback()
    trainer_kwargs.setdefault("max_epochs", 2)
    trainer = pl.Trainer(
        callbacks=[snapshots, callback], logger=TensorBoardLogger(tmp_path, name="run"), accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **trainer_kwargs,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(net, lr=0.5), train, val_loader if val else None)
    ours = [str(w.message) for w in caught if "EmergenceCallback" in str(w.message)]
    return trainer, callback, snapshots, train, val_loader, ours


@pytest.mark.parametrize("sanity_steps", [0, 2])  # without a sanity check no validation loader is loaded yet
def test_check_val_every_n_epoch_measures_validation_epochs_only_on_validation_data(tmp_path, sanity_steps):
    trainer, callback, snapshots, _, val, ours = run(
        tmp_path, max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=sanity_steps
    )
    assert [r["epoch"] for r in callback.history] == [0, 2, 4]
    assert [r["samples"] for r in callback.history] == [VAL_SAMPLES] * 3  # never a training batch
    assert callback.settings["source"] == "validation"
    for record in callback.history:
        assert record["E"] == independent_E(snapshots.at(record["step"]), val)
    assert snapshots.trained_while_attached == 0  # no window open during any training step
    assert any(r["E"] > 0 for r in callback.history) and not ours
    scalars = read_scalars(trainer.logger.log_dir)
    assert [value for _, value in sorted(scalars["emergence/epoch"])] == [0, 2, 4]
    # Per-layer counts (written straight to the loggers) sit at the steps `self.log` used.
    first_layer = callback.history[0]["layers"][0]
    steps = sorted(step for step, _ in scalars["emergence/E"])
    assert sorted(step for step, _ in scalars[f"emergence/active/{first_layer}"]) == steps


def test_check_val_every_n_epoch_with_an_unvalidated_last_epoch_measures_the_final_weights(tmp_path):
    trainer, callback, snapshots, _, val, ours = run(tmp_path, max_epochs=3, check_val_every_n_epoch=2)
    assert [r["epoch"] for r in callback.history] == [0, 2, 3]
    assert callback.history[-1]["step"] == trainer.global_step == 3 * 6
    for record in callback.history:
        assert record["samples"] == VAL_SAMPLES
        assert record["E"] == independent_E(snapshots.at(record["step"]), val)
    logged = read_scalars(trainer.logger.log_dir)["emergence/E"]
    assert sorted(logged)[-1] == (18, pytest.approx(float(callback.history[-1]["E"]), rel=1e-6))
    assert not ours


def test_val_check_interval_measures_each_validation_run_at_its_fraction_of_an_epoch(tmp_path):
    trainer, callback, snapshots, _, val, ours = run(tmp_path, max_epochs=2, val_check_interval=0.5)
    assert [r["epoch"] for r in callback.history] == [0, 0.5, 1, 1.5, 2]
    assert [r["step"] for r in callback.history] == [0, 3, 6, 9, 12]
    for record in callback.history:
        assert record["samples"] == VAL_SAMPLES
        assert record["E"] == independent_E(snapshots.at(record["step"]), val)
    assert snapshots.trained_while_attached == 0 and not ours


def test_val_check_interval_in_batches_across_epochs(tmp_path):
    # Every 4 training batches, counted across epoch boundaries (6 batches an epoch).
    trainer, callback, snapshots, _, val, ours = run(
        tmp_path, max_epochs=2, val_check_interval=4, check_val_every_n_epoch=None
    )
    assert [r["step"] for r in callback.history] == [0, 4, 8, 12]
    assert [r["epoch"] for r in callback.history] == [0, round(4 / 6, 4), round(1 + 2 / 6, 4), 2]
    for record in callback.history:
        assert record["E"] == independent_E(snapshots.at(record["step"]), val)
    assert not ours


def test_max_steps_ending_mid_epoch_measures_the_last_steps(tmp_path):
    # 8 steps: epoch 1 ends at step 6 (validated), then 2 more steps; validation does not run again.
    trainer, callback, snapshots, _, val, ours = run(tmp_path, max_epochs=5, max_steps=8)
    assert trainer.global_step == 8
    assert [r["step"] for r in callback.history] == [0, 6, 8]
    assert [r["epoch"] for r in callback.history] == [0, 1, round(1 + 2 / 6, 4)]
    for record in callback.history:
        assert record["samples"] == VAL_SAMPLES
        assert record["E"] == independent_E(snapshots.at(record["step"]), val)
    assert not ours


def test_max_steps_mid_epoch_without_validation_measures_the_partial_training_epoch(tmp_path):
    trainer, callback, snapshots, train, _, ours = run(tmp_path, val=False, max_epochs=5, max_steps=8)
    assert callback.settings["source"] == "train"
    assert [r["step"] for r in callback.history] == [0, 6, 8]
    assert [r["epoch"] for r in callback.history] == [0, 1, round(1 + 2 / 6, 4)]
    # The epoch-0 pass sees the whole training set; the partial epoch its two batches only.
    assert [r["samples"] for r in callback.history] == [TRAIN_SAMPLES, TRAIN_SAMPLES, 2 * BATCH]
    assert callback.history[0]["E"] == independent_E(snapshots.at(0), train)
    assert not ours


def test_limit_val_batches_zero_measures_training_passes(tmp_path):
    trainer, callback, snapshots, train, _, ours = run(tmp_path, max_epochs=2, limit_val_batches=0)
    assert callback.settings["source"] == "train"
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]
    assert [r["samples"] for r in callback.history] == [TRAIN_SAMPLES] * 3
    assert callback.history[0]["E"] == independent_E(snapshots.at(0), train)  # before any step
    assert not ours  # something was measured: no "measured nothing" warning
