"""EmergenceCallback's life: divergence (NaN), numpy arguments, a second fit, a resume with other settings."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from tiny_models import Classifier, loaders, mlp

from emergence_lightning import EmergenceCallback, EmergenceRecord
from emergence_lightning.functional import stops_at_zero, zero_streak
from emergence_lightning.paper.predictor.stopping import stop_at_zero_epoch


def trainer(tmp_path, callbacks, max_epochs=2, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


class Diverging(Classifier):
    """A real divergence: a learning rate so large that the first steps overflow the weights to inf/NaN."""

    def __init__(self) -> None:
        super().__init__(mlp(), lr=1e30)


# ---- item 8: a non-finite measurement is never E = 0 ---------------------------------------------


def test_diverged_weights_log_nan_and_early_stopping_stops_as_diverged(tmp_path, caplog):
    torch.manual_seed(0)
    train, val = loaders()
    callback = EmergenceCallback(stop_at_zero=True)
    stopper = EarlyStopping(
        monitor="emergence/log10_E", mode="max", patience=5, check_finite=True, verbose=True
    )
    model = Diverging()
    with pytest.warns(UserWarning, match=r"layers \['net.1', 'net.3'\] produced NaN or inf .* logged as NaN"):
        trainer(tmp_path, [callback, stopper], max_epochs=4).fit(model, train, val)
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # the weights did diverge
    before, first = callback.history[0], callback.history[1]
    assert before.finite and isinstance(before.E, int)
    assert first.nonfinite_layers == ("net.1", "net.3") and not first.finite
    assert math.isnan(first.E) and math.isnan(first.log10_E) and math.isnan(first.relative)
    # EarlyStopping stopped on the NaN ("diverged") after the first epoch; stop_at_zero never counted it.
    assert stopper.stopped_epoch == 0 and len(callback.history) == 2
    assert (
        "emergence/log10_E = nan is not finite" in caplog.text and "emergence has been 0" not in caplog.text
    )


def test_stop_rule_is_one_rule_and_nan_is_not_zero():
    assert zero_streak([3, 0, math.nan, 0, 0]) == 2
    assert stops_at_zero([0, 0], patience=1) and not stops_at_zero([0, math.nan], patience=0)
    # The paper's stopping study reads the callback's rule.
    assert stop_at_zero_epoch([5, 0, math.nan, 0, 0], patience=1) == 5


# ---- item 6/7 (arguments): numpy scalars, node_dim keys --------------------------------------------


def test_numpy_scalars_are_accepted_as_python_numbers(tmp_path):
    callback = EmergenceCallback(
        threshold=np.float32(0.05),
        patience=np.int64(1),
        min_firing_rate=np.float64(0.4),
        node_dim={"net.1": np.int64(1)},
    )
    assert type(callback.threshold) is float and callback.threshold == pytest.approx(0.05)
    assert type(callback.patience) is int and callback.patience == 1
    assert callback.node_dim == {"net.1": 1} and type(callback.node_dim["net.1"]) is int
    train, val = loaders()
    trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(mlp()), train, val)
    assert [record.epoch for record in callback.history] == [0, 1]


def test_node_dim_key_typo_is_refused_at_setup_naming_it(tmp_path):
    train, val = loaders()
    with pytest.raises(ValueError, match=r"`node_dim` names modules that don't exist: \['net\.act_1'\]"):
        trainer(tmp_path, [EmergenceCallback(node_dim={"net.act_1": 1})]).fit(Classifier(mlp()), train, val)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_train_steps": 0}, r"`every_n_train_steps` must be an int >= 1 or None, got 0"),
        ({"probe_batches": 2.5}, r"`probe_batches` must be an int >= 1 or None, got 2.5"),
        ({"every_n_epochs": 2}, r"`every_n_epochs` .* needs `probe_batches`"),
        ({"patience": np.float32(1)}, r"`patience` must be an int >= 0"),
        ({"threshold": np.bool_(True)}, r"`threshold` must be a number"),
    ],
)
def test_bad_cadence_and_numpy_arguments_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EmergenceCallback(**kwargs)


# ---- item 7: lifecycle ------------------------------------------------------------------------


def test_a_second_fit_is_a_separate_run_with_its_own_epoch_zero(tmp_path, caplog):
    train, val = loaders()
    callback = EmergenceCallback()
    model = Classifier(mlp())
    trainer(tmp_path / "a", [callback], max_epochs=2).fit(model, train, val)
    trainer(tmp_path / "b", [callback], max_epochs=2).fit(model, train, val)
    assert [(record.run, record.epoch, record.before_training) for record in callback.history] == [
        (1, 0, True), (1, 1, False), (1, 2, False), (2, 0, True), (2, 1, False), (2, 2, False),
    ]  # fmt: skip
    assert "this fit is run 2" in caplog.text
    # The second run starts from the first run's trained weights: its epoch 0 equals run 1's last E.
    assert callback.history[3].a == callback.history[2].a


def test_resume_with_a_changed_threshold_warns_and_never_says_before_training(tmp_path):
    train, val = loaders()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = EmergenceCallback(threshold=0.05, statistic="mean")
    trainer(tmp_path, [first, checkpoints], max_epochs=2, enable_checkpointing=True).fit(
        Classifier(mlp()), train, val
    )
    resumed = EmergenceCallback(threshold=0.5, statistic="max")
    with pytest.warns(
        UserWarning, match=r"`statistic` 'mean' -> 'max'; `threshold` 0\.05 -> 0\.5\. .* run 2"
    ):
        trainer(tmp_path, [resumed], max_epochs=3).fit(
            Classifier(mlp()), train, val, ckpt_path=str(tmp_path / "last.ckpt")
        )
    runs = [(record.run, record.epoch, record.before_training) for record in resumed.history]
    assert runs == [(1, 0, True), (1, 1, False), (1, 2, False), (2, 2, False), (2, 3, False)]


def test_resume_with_the_same_settings_continues_the_run_silently(tmp_path):
    train, val = loaders()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(tmp_path, [EmergenceCallback(), checkpoints], max_epochs=1, enable_checkpointing=True).fit(
        Classifier(mlp()), train, val
    )
    resumed = EmergenceCallback(threshold=np.float64(0.05))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="EmergenceCallback: this resume")
        trainer(tmp_path, [resumed], max_epochs=2).fit(
            Classifier(mlp()), train, val, ckpt_path=str(tmp_path / "last.ckpt")
        )
    assert [(record.run, record.epoch) for record in resumed.history] == [(1, 0), (1, 1), (1, 2)]


# ---- item 4 of issue 16: typed history that still reads as before ------------------------------------


def test_history_holds_typed_records_that_read_as_the_old_dicts(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback()
    trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(mlp()), train, val)
    record = callback.history[-1]
    assert isinstance(record, EmergenceRecord)
    assert record["step"] == record.global_step == 6 and record["layers"] == list(record.names) == [
        "net.1",
        "net.3",
    ]
    assert dict(record)["E"] == record.E and record.get("E_path") is None
    assert EmergenceRecord.from_history(record.to_dict()) == record
    with pytest.raises(KeyError, match="'steps'"):
        record["steps"]
