"""EmergenceCallback is an instrument: a fit with it equals the fit without it, bit for bit.

Real CPU fits, deterministic: every weight and buffer (BatchNorm's running statistics included)
of a network with dropout and BatchNorm must come out identical, whatever owns the randomness
(the global RNG, a loader's own generator, numpy and Python RNGs used by the step) and whichever
pass the callback drives itself (epoch 0, probe data, a step cadence).
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tiny_models import Classifier, blobs
from torch import nn
from torch.utils.data import DataLoader

from emergence_lightning import EmergenceCallback


class NoisyClassifier(Classifier):
    """Dropout, BatchNorm, and a step that draws from numpy and Python RNGs too."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return nn.functional.cross_entropy(self(x), y)


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 12), nn.ReLU(),
        nn.Linear(12, 3),
    )  # fmt: skip


def loader(samples: int, seed: int, generator: bool, shuffle: bool, workers: int = 0) -> DataLoader:
    return DataLoader(
        blobs(samples, seed=seed),
        batch_size=16,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(7) if generator else None,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def final_state(tmp_path, callbacks, *, generator=False, sanity=0, workers=0, validation=True, max_epochs=2):
    pl.seed_everything(3, workers=True, verbose=False)
    np.random.seed(3)
    model = NoisyClassifier(net())
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=sanity,
        deterministic=True,
    )
    train = loader(64, 0, generator, shuffle=True, workers=workers)
    val = loader(40, 1, generator, shuffle=generator, workers=workers) if validation else None
    trainer.fit(model, train, val)
    after = (
        torch.rand(1).item(),
        float(np.random.rand()),
        random.random(),
    )  # the RNGs where training left them
    return {key: value.clone() for key, value in model.state_dict().items()}, after


def assert_same_fit(with_callback, without):
    (weights, rngs), (reference, reference_rngs) = with_callback, without
    assert weights.keys() == reference.keys()
    differ = [key for key in reference if not torch.equal(weights[key], reference[key])]
    assert not differ, f"differ: {differ}"
    assert rngs == reference_rngs


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"generator": True},
        {"sanity": 2},
        {"generator": True, "sanity": 2},
        {"validation": False},
        {"generator": True, "validation": False},
    ],
    ids=[
        "global-rng",
        "loader-generator",
        "sanity-check",
        "generator-sanity-check",
        "train-passes",
        "generator-train",
    ],
)
def test_fit_with_callback_is_the_fit_without_it(tmp_path, options):
    callback = EmergenceCallback()
    with_callback = final_state(tmp_path, [callback], **options)
    assert callback.history and callback.history[0]["epoch"] == 0
    assert_same_fit(with_callback, final_state(tmp_path, [], **options))


@pytest.mark.parametrize("generator", [False, True], ids=["global-rng", "loader-generator"])
def test_probe_dataloader_leaves_the_fit_untouched(tmp_path, generator):
    probe = loader(24, 2, generator, shuffle=True)
    callback = EmergenceCallback(probe_dataloader=probe)
    with_callback = final_state(tmp_path, [callback], generator=generator)
    assert [record["epoch"] for record in callback.history] == [0, 1, 2]
    assert_same_fit(with_callback, final_state(tmp_path, [], generator=generator))


def test_loader_workers_leave_the_fit_untouched(tmp_path):
    # Training passes measured at epoch 0: the pass iterates the training loader, whose persistent
    # workers (and their seeds) the training keeps for the whole run.
    options = {"workers": 1, "generator": True, "validation": False, "max_epochs": 1}
    callback = EmergenceCallback()
    with_callback = final_state(tmp_path, [callback], **options)
    assert callback.history[0]["epoch"] == 0
    assert_same_fit(with_callback, final_state(tmp_path, [], **options))


@pytest.mark.parametrize("validation", [True, False], ids=["drawn-from-validation", "drawn-from-training"])
def test_cadence_on_a_probe_set_leaves_the_fit_untouched(tmp_path, validation):
    options = {"generator": True, "validation": validation}
    callback = EmergenceCallback(every_n_train_steps=2, every_n_epochs=1, probe_batches=2)
    with_callback = final_state(tmp_path, [callback], **options)
    assert [record.global_step for record in callback.history] == [0, 2, 4, 6, 8]
    assert_same_fit(with_callback, final_state(tmp_path, [], **options))


def test_measure_without_a_trainer_leaves_the_random_states_and_the_loader_generator(tmp_path):
    from emergence_lightning.measure import measure_activity

    generator = torch.Generator().manual_seed(5)
    batches = DataLoader(blobs(32).tensors[0], batch_size=8, shuffle=True, generator=generator)
    model = net()
    before = (torch.get_rng_state(), generator.get_state(), model.training)
    assert measure_activity(model, batches) is not None
    assert torch.equal(torch.get_rng_state(), before[0]) and torch.equal(generator.get_state(), before[1])
    assert model.training is before[2]
