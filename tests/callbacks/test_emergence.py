import copy
import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.oracle import emergence_oracle
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tiny_models import Classifier, blobs, cnn, loaders, mlp
from torch import nn
from torch.utils.data import DataLoader

from emergence_lightning import EmergenceCallback, EmergenceRecord, count_parameters


def make_trainer(tmp_path, callbacks, max_epochs=3, **kwargs):
    kwargs.setdefault("logger", TensorBoardLogger(tmp_path, name="run"))
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


class WeightSnapshots(Callback):
    """Copies the model at every measurement point, to recompute E independently."""

    def __init__(self):
        self.snapshots = []

    def on_train_start(self, trainer, pl_module):
        self.snapshots.append(copy.deepcopy(pl_module.net).eval())

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.snapshots.append(copy.deepcopy(pl_module.net).eval())


def independent_emergence(net: nn.Sequential, val_loader: DataLoader, threshold: float = 0.05) -> int:
    """Per-node means of each activation over the validation data, then paths counted by brute force."""
    outputs = {}
    with torch.no_grad():
        for x, _ in val_loader:
            h = x
            for index, layer in enumerate(net):
                h = layer(h)
                if isinstance(layer, (nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU)):
                    node_means = h.transpose(0, 1).reshape(h.shape[1], -1).double()
                    outputs.setdefault(index, []).append(node_means)
    n, a = [], []
    for index in sorted(outputs):
        means = torch.cat(outputs[index], dim=1).mean(dim=1)
        n.append(means.numel())
        a.append(int((means > threshold).sum()))
    return emergence_oracle(n, a)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_tensorboard_values_equal_independent_computation(tmp_path, kind):
    torch.manual_seed(0)
    image = kind == "cnn"
    train, val = loaders(samples=64, val_samples=40, features=64 if image else 8, image=image)
    net = cnn() if image else mlp(features=8, hidden=(24, 16, 12))
    with torch.no_grad():  # kill a few nodes of every layer so E is not trivially 0
        hidden = [m for m in net if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
        for layer in hidden:
            layer.bias[: layer.bias.numel() // 3] = -3.0
    model = Classifier(net, lr=0.5)
    snapshots = WeightSnapshots()
    callback = EmergenceCallback()
    trainer = make_trainer(tmp_path, [snapshots, callback], max_epochs=3)
    trainer.fit(model, train, val)

    expected = [independent_emergence(snapshot, val) for snapshot in snapshots.snapshots]
    assert [record["E"] for record in callback.history] == expected
    assert [record["epoch"] for record in callback.history] == [0, 1, 2, 3]
    assert any(E > 0 for E in expected)

    scalars = read_scalars(trainer.logger.log_dir)
    logged = [value for _, value in sorted(scalars["emergence/E"])]
    assert logged == pytest.approx([float(E) for E in expected], rel=1e-6)
    assert [value for _, value in sorted(scalars["emergence/epoch"])] == [0, 1, 2, 3]
    parameters = count_parameters(model)
    relative = [value for _, value in sorted(scalars["emergence/relative"])]
    assert relative == pytest.approx([E / parameters for E in expected], rel=1e-6)
    log10 = [value for _, value in sorted(scalars["emergence/log10_E"])]
    assert log10 == pytest.approx([math.log10(E + 1) for E in expected], rel=1e-6)
    names = callback.history[0]["layers"]
    for name in names:
        assert f"emergence/active/{name}" in scalars and f"emergence/dead/{name}" in scalars
    last = callback.history[-1]
    assert scalars[f"emergence/active/{names[0]}"][-1][1] == last["a"][0]
    assert scalars[f"emergence/dead/{names[0]}"][-1][1] == last["n"][0] - last["a"][0]
    assert scalars["emergence/active_fraction"][-1][1] == pytest.approx(sum(last["a"]) / sum(last["n"]))


def test_history_record_contents(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback()
    make_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(mlp()), train, val)
    record = callback.history[-1]
    assert set(record) >= {"epoch", "step", "layers", "n", "a", "E", "relative", "log10_E", "active_fraction"}
    assert record["layers"] == ["net.1", "net.3"] and record["n"] == [16, 12]
    assert (
        isinstance(record, EmergenceRecord) and record.names == ("net.1", "net.3") and record.global_step == 6
    )
    assert isinstance(record["E"], int)
    assert record["step"] == 6  # 96 samples / 16 per batch


def test_hooks_detached_outside_measurement_and_after_fit(tmp_path):
    train, val = loaders()
    model = Classifier(mlp())

    class CheckNoHooksWhileTraining(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            assert all(not m._forward_hooks for m in pl_module.modules())

    make_trainer(tmp_path, [EmergenceCallback(), CheckNoHooksWhileTraining()], max_epochs=2).fit(
        model, train, val
    )
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_when_validation_step_raises(tmp_path):
    train, val = loaders()

    class Exploding(Classifier):
        def validation_step(self, batch, batch_idx):
            if self.current_epoch == 1:
                raise RuntimeError("boom in validation")
            return super().validation_step(batch, batch_idx)

    model = Exploding(mlp())
    model.net[0].eval()  # a mode the user chose must survive
    with pytest.raises(RuntimeError, match="boom in validation"):
        make_trainer(tmp_path, [EmergenceCallback()], max_epochs=3).fit(model, train, val)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_train_mode_untouched_by_epoch_zero_pass(tmp_path):
    train, val = loaders()
    seen = []

    class RecordModes(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append({name: m.training for name, m in pl_module.named_modules()})

    # RecordModes runs after EmergenceCallback's on_train_start, which runs a forward pass in eval mode
    make_trainer(tmp_path, [EmergenceCallback(), RecordModes()], max_epochs=1).fit(
        Classifier(mlp()), train, val
    )
    assert all(seen[0].values())


def test_falls_back_to_training_passes_without_validation(tmp_path):
    train, _ = loaders()
    callback = EmergenceCallback()
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    trainer.fit(Classifier(mlp()), train)
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]
    assert callback.history[1]["samples"] == 96
    assert "emergence/E" in trainer.callback_metrics


def test_probe_dataloader(tmp_path):
    train, val = loaders()
    probe = DataLoader(loaders(samples=24)[0].dataset, batch_size=8)
    callback = EmergenceCallback(probe_dataloader=probe)
    make_trainer(tmp_path, [callback], max_epochs=2).fit(Classifier(mlp()), train, val)
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]
    assert all(r["samples"] == 24 for r in callback.history)


def test_empty_validation_epoch_gives_no_measurement(tmp_path):
    train, _ = loaders()
    empty = DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)))
    callback = EmergenceCallback()
    make_trainer(tmp_path, [callback], max_epochs=2).fit(Classifier(mlp()), train, empty)
    assert [r["epoch"] for r in callback.history] == [0, 1, 2]  # the training passes stand in


class TwoValidationLoaders(Classifier):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return super().validation_step(batch, batch_idx)


def test_empty_first_validation_dataloader_warns_once(tmp_path):
    train, val = loaders()
    empty = DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)))
    callback = EmergenceCallback(measure_at_start=False)
    with pytest.warns(
        UserWarning, match=r"the first validation dataloader gave no batch.*`probe_dataloader=`"
    ) as seen:
        make_trainer(tmp_path, [callback], max_epochs=2).fit(TwoValidationLoaders(mlp()), train, [empty, val])
    assert callback.history == []
    assert len([w for w in seen if "first validation dataloader" in str(w.message)]) == 1


def test_sanity_check_is_not_measured(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback(measure_at_start=False)
    make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=2).fit(
        Classifier(mlp()), train, val
    )
    assert [r["epoch"] for r in callback.history] == [1]
    assert callback.history[0]["samples"] == 40


class DeadNetwork(Classifier):
    """A ReLU fed by a huge negative bias: every node dead, so E = 0 from the start."""

    def __init__(self):
        net = mlp(hidden=(6, 4))
        with torch.no_grad():
            for layer in (net[0], net[2]):
                layer.bias.fill_(-100.0)
        super().__init__(net, lr=0.0)


def test_stop_at_zero_with_patience(tmp_path, caplog):
    train, val = loaders()
    callback = EmergenceCallback(stop_at_zero=True, patience=1)
    trainer = make_trainer(tmp_path, [callback], max_epochs=10)
    with caplog.at_level(logging.INFO):
        trainer.fit(DeadNetwork(), train, val)
    # all nodes dead: no active end node, so E = 0; epochs 1 and 2 are zero -> stop after epoch 2
    assert [r["E"] for r in callback.history] == [0, 0, 0]
    assert trainer.current_epoch == 2
    assert "emergence has been 0 for 2 consecutive measurements" in caplog.text


def test_stop_at_zero_warns_when_E_is_zero_before_training(tmp_path):
    # One hidden layer: no later layer for a dead node to reach, so E = 0 whatever the training.
    train, val = loaders()
    callback = EmergenceCallback(stop_at_zero=True, patience=1)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    with pytest.warns(
        UserWarning, match=r"E is already 0 before training .*will stop after the next 2 measurements"
    ):
        trainer.fit(Classifier(mlp(hidden=(16,))), train, val)
    assert callback.history[0]["epoch"] == 0 and callback.history[0]["E"] == 0


def test_no_zero_warning_when_E_is_positive_before_training(tmp_path, recwarn):
    train, val = loaders()
    callback = EmergenceCallback(threshold=0.5, stop_at_zero=True)  # dead nodes in the first layer too
    make_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(mlp()), train, val)
    assert callback.history[0]["E"] > 0
    assert not [w for w in recwarn if "already 0 before training" in str(w.message)]


def test_early_stopping_on_our_key(tmp_path):
    # EarlyStopping(stopping_threshold=0) never fires at exactly 0 (strict comparison); a threshold
    # just above zero does, because E is an integer.
    train, val = loaders()
    stopper = EarlyStopping(monitor="emergence/E", mode="min", stopping_threshold=0.5, patience=100)
    trainer = make_trainer(tmp_path, [EmergenceCallback(), stopper], max_epochs=10)
    trainer.fit(DeadNetwork(), train, val)
    assert trainer.current_epoch == 1


def test_state_dict_round_trip_continues_history(tmp_path):
    train, val = loaders()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = EmergenceCallback()
    trainer = make_trainer(tmp_path, [first, checkpoint], max_epochs=2, enable_checkpointing=True)
    trainer.fit(Classifier(mlp()), train, val)
    resumed = EmergenceCallback()
    trainer = make_trainer(tmp_path, [resumed], max_epochs=4)
    trainer.fit(Classifier(mlp()), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3, 4]
    assert resumed.history[:3] == first.history
    assert (
        resumed.state_key
        == "EmergenceCallback{'threshold': 0.05, 'statistic': 'mean_abs', 'variant': 'paper', 'prefix': 'emergence'}"
    )


def test_tensorboard_histograms_layout_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, val = loaders()
    trainer = make_trainer(tmp_path, [EmergenceCallback(log_histograms=True)], max_epochs=1)
    trainer.fit(Classifier(mlp()), train, val)
    files = sorted(p for p in (tmp_path / "run").rglob("events.out.tfevents*"))
    tags = {"histograms": set(), "plugins": set()}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"histograms": 0})
        accumulator.Reload()
        tags["histograms"] |= set(accumulator.Tags()["histograms"])
        tags["plugins"] |= set(accumulator.PluginTagToContent("custom_scalars")) | set(
            accumulator.PluginTagToContent("hparams")
        )
    assert {"emergence/activity/net.1", "emergence/activity/net.3"} <= tags["histograms"]
    assert "custom_scalars__config__" in tags["plugins"]
    assert "_hparams_/session_start_info" in tags["plugins"]
    assert trainer.logger.hparams["emergence/threshold"] == 0.05
    assert trainer.logger.hparams["emergence/source"] == "validation"
    saved = (Path(trainer.logger.log_dir) / "hparams.yaml").read_text()  # written once, at the start
    assert "emergence/threshold: 0.05" in saved and "emergence/layers: every activation" in saved


def test_no_parameters_logs_nan_relative(tmp_path):
    class Frozen(Classifier):
        def configure_optimizers(self):
            return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)

        def training_step(self, batch, batch_idx):
            return self(batch[0]).sum() * 0 + torch.zeros((), requires_grad=True)

    model = Frozen(mlp())
    model.net.requires_grad_(False)
    callback = EmergenceCallback()
    with pytest.warns(UserWarning, match=r"has no trainable parameter: relative emergence is logged as NaN"):
        make_trainer(tmp_path, [callback], max_epochs=1).fit(model, *loaders())
    assert math.isnan(callback.history[-1]["relative"])


def test_model_without_trackable_layer_fails_before_training(tmp_path):
    model = Classifier(nn.Sequential(nn.Linear(8, 3)))
    with pytest.raises(
        ValueError, match=r"Classifier ran, but no activation was found in its forward pass.*layers=\["
    ):
        make_trainer(tmp_path, [EmergenceCallback()], max_epochs=1).fit(model, *loaders())


def test_explicit_layers_that_do_not_exist_fail_in_setup(tmp_path):
    with pytest.raises(ValueError, match=r"don't exist: \['net.9'\]. Some valid names: \['net', 'net.0'"):
        make_trainer(tmp_path, [EmergenceCallback(layers=["net.9"])], max_epochs=1).fit(
            Classifier(mlp()), *loaders()
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": -1}, ValueError, r"`threshold` must be a finite number >= 0, got -1"),
        ({"threshold": float("inf")}, ValueError, r"`threshold` must be a finite number >= 0, got inf"),
        ({"statistic": "median"}, ValueError, r"`statistic` must be one of .*'median'"),
        ({"variant": "exact"}, ValueError, r"`variant` must be one of .*'exact'"),
        ({"patience": -1}, ValueError, r"`patience` must be an int >= 0, got -1"),
        ({"prefix": ""}, ValueError, r"`prefix` must be a non-empty string.*got ''"),
        ({"probe_step": 3}, TypeError, r"`probe_step` must be callable, got 3"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EmergenceCallback(**kwargs)


def test_weights_connectivity_logs_path_count_beside_dense(tmp_path):
    from torch.nn.utils import prune

    train, val = loaders()
    net = mlp(hidden=(16, 12, 10))
    with torch.no_grad():
        net[0].bias[:6] = -5.0  # dead nodes in the first layer
    dense_model = Classifier(copy.deepcopy(net), lr=0.0)
    pruned_model = Classifier(copy.deepcopy(net), lr=0.0)
    prune.l1_unstructured(pruned_model.net[2], "weight", amount=0.9)  # most edges 16 -> 12 gone
    results = {}
    for name, model in (("dense", dense_model), ("pruned", pruned_model)):
        callback = EmergenceCallback(connectivity="weights")
        trainer = make_trainer(tmp_path / name, [callback], max_epochs=1)
        trainer.fit(model, train, val)
        results[name] = callback.history[-1]
        scalars = read_scalars(trainer.logger.log_dir)
        assert scalars["emergence/E_path"][-1][1] == pytest.approx(float(callback.history[-1]["E_path"]))
    assert results["dense"]["E_path"] == results["dense"]["E"] > 0
    # the dense formula counts edges that pruning removed; the path count does not
    assert results["pruned"]["E_path"] < results["pruned"]["E"]
    charts = custom_scalar_charts(trainer.logger.log_dir)
    assert charts["log10 E: dense and path-exact"] == ["^emergence/log10_E$", "^emergence/log10_E_path$"]


def custom_scalar_charts(log_dir: str) -> dict[str, list[str]]:
    """Chart title -> tags of the custom-scalars layout written to a run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    charts = {}
    for path in Path(log_dir).glob("events.out.tfevents*"):
        accumulator = EventAccumulator(str(path), size_guidance={"tensors": 0})
        accumulator.Reload()
        if "custom_scalars__config__" in accumulator.Tags()["tensors"]:
            proto = accumulator.Tensors("custom_scalars__config__")[0].tensor_proto
            for category in layout_pb2.Layout.FromString(proto.string_val[0]).category:
                for chart in category.chart:
                    charts[chart.title] = list(chart.multiline.tag)
    return charts


def test_weights_connectivity_on_untraceable_model_warns_and_keeps_dense(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.out = nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)

        def forward(self, x):
            h = self.act(self.fc(x))
            if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                h = h * 1.0
            return self.out(h)

    callback = EmergenceCallback(connectivity="weights")
    with pytest.warns(UserWarning, match=r"connectivity='weights'.*Logging the dense E only"):
        make_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(Branchy()), *loaders())
    assert callback.history[-1]["E_path"] is None and isinstance(callback.history[-1]["E"], int)


def test_bad_connectivity():
    with pytest.raises(
        ValueError, match=r"`connectivity` must be one of \('dense', 'weights'\), got 'sparse'"
    ):
        EmergenceCallback(connectivity="sparse")


class MeasureMidEpoch(Callback):
    """Asks for a measurement after the 3rd training batch of epoch 0, as the branching callback does."""

    def __init__(self, emergence_callback, **kwargs):
        self.emergence_callback, self.kwargs = emergence_callback, kwargs
        self.records, self.snapshots, self.stopped = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == 2:
            self.snapshots.append(copy.deepcopy(pl_module.net).eval())
            self.records.append(
                self.emergence_callback.measure_now(trainer, pl_module, epoch=0.5, **self.kwargs)
            )
            self.stopped.append(trainer.should_stop)


def test_measure_now_records_logs_and_equals_independent_computation(tmp_path):
    from emergence_lightning import EmergenceRecord

    torch.manual_seed(0)
    train, val = loaders(samples=96, val_samples=40)
    net = mlp(features=8, hidden=(24, 16, 12))
    with torch.no_grad():
        for layer in [m for m in net if isinstance(m, nn.Linear)][:-1]:
            layer.bias[: layer.bias.numel() // 3] = -3.0
    callback = EmergenceCallback()
    asker = MeasureMidEpoch(callback)
    trainer = make_trainer(tmp_path, [callback, asker], max_epochs=1)
    trainer.fit(Classifier(net, lr=0.5), train, val)

    (record,) = asker.records
    assert isinstance(record, EmergenceRecord)
    assert record.E == independent_emergence(asker.snapshots[0], val) and record.E > 0
    assert record.epoch == 0.5 and record.global_step == 3 and not record.before_training
    assert record.names == ("net.1", "net.3", "net.5") and record.n == (24, 16, 12)
    assert record.log10_E == pytest.approx(math.log10(record.E + 1))
    assert record.parameters == sum(p.numel() for p in net.parameters())
    with pytest.raises(AttributeError, match="cannot assign"):
        record.E = 0  # frozen
    # history: the epoch-0 pass, the asked-for one, the epoch-1 validation; typed twins via records()
    assert [(r["epoch"], r["before_training"]) for r in callback.history] == [
        (0, True),
        (0.5, False),
        (1, False),
    ]
    assert [r.epoch for r in callback.records()] == [0, 0.5, 1]
    assert callback.records()[1] == record
    scalars = read_scalars(trainer.logger.log_dir)
    assert (3, pytest.approx(float(record.E), rel=1e-6)) in [(s, v) for s, v in scalars["emergence/E"]]
    assert (3, 0.5) in scalars["emergence/epoch"]


def test_measure_now_without_logging_never_stops_training(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback(stop_at_zero=True, patience=0)
    asker = MeasureMidEpoch(callback, log=False)
    trainer = make_trainer(tmp_path, [callback, asker], max_epochs=1)
    with pytest.warns(UserWarning, match="E is already 0 before training"):
        trainer.fit(DeadNetwork(), train, val)
    assert asker.records[0].E == 0 and asker.stopped == [False]
    epochs_logged = [value for _, value in read_scalars(trainer.logger.log_dir)["emergence/epoch"]]
    assert 0.5 not in epochs_logged


def test_measure_now_outside_a_fit_is_refused():
    callback = EmergenceCallback()
    with pytest.raises(RuntimeError, match="measure_now needs the callback set up on this module"):
        callback.measure_now(pl.Trainer(logger=False), Classifier(mlp()), epoch=1)


# ---- loud instead of silently wrong: few layers, E = 0 from one layer, nothing measured, test runs ----


class OneActivationDeepModel(nn.Module):
    """Four Linear layers but a single activation between them: only one layer to track."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 10), nn.Linear(10, 10)
        self.fc3, self.out = nn.Linear(10, 10), nn.Linear(10, 3)

    def forward(self, x):
        return self.out(self.fc3(self.fc2(torch.relu(self.fc1(x)))))


def test_few_tracked_layers_in_a_deep_model_warn_naming_them(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback()
    message = (
        r"found only 1 tracked layer \(\['net.relu-fn'\]\) in Classifier, which has 4 modules with parameters "
        r"\(\['net.fc1', 'net.fc2', 'net.fc3', 'net.out'\]\)"
    )
    with pytest.warns(UserWarning, match=message) as seen:
        make_trainer(tmp_path, [callback], max_epochs=2).fit(Classifier(OneActivationDeepModel()), train, val)
    assert len([w for w in seen if "modules with parameters" in str(w.message)]) == 1  # once, not every epoch
    assert len(callback.history) == 3


def test_E_zero_because_one_layer_is_tracked_warns(tmp_path):
    # The LSTM classifier of issue 9: embedding -> LSTM -> Linear. The LSTM output is the only layer.
    class LSTMClassifier(Classifier):
        def __init__(self):
            super().__init__(nn.Identity())
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(6, 3)
            self.lstm = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x):
            return self.head(self.lstm(self.embed(x))[0][:, -1])

    tokens = torch.randint(0, 10, (32, 5), generator=torch.Generator().manual_seed(0))
    data = DataLoader(torch.utils.data.TensorDataset(tokens, tokens[:, 0] % 3), batch_size=16)
    callback = EmergenceCallback()
    message = r"E is 0 because only 1 tracked layer \(\['lstm'\]\).*Track at least two"
    with pytest.warns(UserWarning, match=message):
        make_trainer(tmp_path, [callback], max_epochs=1).fit(LSTMClassifier(), data, data)
    assert [r["E"] for r in callback.history] == [0, 0] and callback.history[0]["n"] == [6]


def test_two_tracked_layers_give_no_coverage_warning(tmp_path, recwarn):
    train, val = loaders()
    make_trainer(tmp_path, [EmergenceCallback()], max_epochs=1).fit(Classifier(mlp()), train, val)
    assert not [w for w in recwarn if "tracked layer" in str(w.message)]


def test_fit_that_measures_nothing_warns(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback()
    with pytest.warns(UserWarning, match=r"EmergenceCallback measured nothing in this `trainer.fit` run"):
        make_trainer(tmp_path, [callback], max_epochs=0).fit(Classifier(mlp()), train, val)
    assert callback.history == []


def test_validate_measures_and_one_that_measures_nothing_warns(tmp_path):
    train, val = loaders()
    callback = EmergenceCallback()
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    trainer.validate(Classifier(mlp()), val)
    assert len(callback.history) == 1 and callback.history[0]["samples"] == 40  # validate is measured
    empty = make_trainer(tmp_path / "empty", [EmergenceCallback()], limit_val_batches=0)
    with pytest.warns(UserWarning, match=r"measured nothing in this `trainer.validate` run"):
        empty.validate(Classifier(mlp()), val)


def test_test_runs_are_not_measured_and_say_so(tmp_path, caplog):
    train, val = loaders()
    model = Classifier(mlp())
    model.test_step = model.validation_step
    callback = EmergenceCallback()
    trainer = make_trainer(tmp_path, [callback], max_epochs=1)
    with pytest.warns(UserWarning, match=r"does not measure `trainer.test` runs .*trainer.validate\(model, "):
        trainer.test(model, val)  # nothing measured before: a warning, the user likely expected a measurement
    assert callback.history == []
    fitted = EmergenceCallback()
    trainer = make_trainer(tmp_path / "fitted", [fitted], max_epochs=1)
    trainer.fit(model, train, val)
    measured = list(fitted.history)
    with caplog.at_level(logging.INFO):
        trainer.test(model, val)  # after a fit: said as information
    assert "does not measure `trainer.test` runs" in caplog.text
    assert fitted.history == measured


def test_two_callbacks_with_one_prefix_are_refused_naming_both(tmp_path):
    train, val = loaders()
    first, second = EmergenceCallback(), EmergenceCallback(statistic="fraction")
    message = (
        r"Two EmergenceCallbacks log under the same `prefix` 'emergence': callbacks\[0\] .*statistic='mean_abs'.* and "
        r"callbacks\[1\] .*statistic='fraction'.*prefix='emergence_2'"
    )
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, [first, second], max_epochs=1).fit(Classifier(mlp()), train, val)


def test_two_callbacks_with_their_own_prefixes_log_apart(tmp_path):
    train, val = loaders()
    mean, fraction = EmergenceCallback(), EmergenceCallback(statistic="fraction", prefix="firing")
    trainer = make_trainer(tmp_path, [mean, fraction], max_epochs=1)
    trainer.fit(Classifier(mlp()), train, val)
    scalars = read_scalars(trainer.logger.log_dir)
    for callback, prefix in [(mean, "emergence"), (fraction, "firing")]:
        assert [v for _, v in sorted(scalars[f"{prefix}/log10_E"])] == pytest.approx(
            [r["log10_E"] for r in callback.history]
        )


def test_only_the_first_of_several_validation_dataloaders_is_measured_and_it_says_so(tmp_path):
    train, val = loaders()
    other = DataLoader(blobs(24, seed=5), batch_size=8)
    callback = EmergenceCallback()
    with pytest.warns(UserWarning, match=r"measures the first of the 2 validation dataloaders only") as seen:
        make_trainer(tmp_path, [callback], max_epochs=2).fit(TwoValidationLoaders(mlp()), train, [val, other])
    assert len([w for w in seen if "validation dataloaders only" in str(w.message)]) == 1  # once a run
    assert [record.samples for record in callback.history] == [40, 40, 40]  # the first loader's 40 samples
