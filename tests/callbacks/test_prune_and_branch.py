"""PruneAndBranchCallback: real Trainer fits of tiny models that fork into a control and pruned branches."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch
from helpers.paths import count_paths
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from tb import read_scalars
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tiny_models import Classifier, blobs, loaders, mlp
from torch import nn
from torch.utils.data import DataLoader

from emergence_lightning.branching import (
    apply_masks,
    check_amounts,
    effective_weights_zero_where_masked,
    epochs_to_fraction_of_final,
    find_prunable,
    fingerprint,
    masks,
    permanent_state_dict,
    pick_monitor,
    prune_model,
    reinitialize,
)
from emergence_lightning.branching.store import RESULT_FILE
from emergence_lightning.branching.table import PATH_COLUMNS, SUMMARY_COLUMNS
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.callbacks.trainer_factory import check_strategy
from emergence_lightning.pruning import count_parameters

DDP_SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_branching.py"


class Probe(pl.Callback):
    """Every fit gets a copy (the class attribute `fits` is shared): what each fit started and ended with."""

    fits: ClassVar[list[dict]] = []

    def on_train_start(self, trainer, pl_module):
        Probe.fits.append(
            {
                "log_dir": trainer.log_dir,
                "epoch_at_start": trainer.current_epoch,
                "step_at_start": trainer.global_step,
                "start": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "batches": [],
                "callbacks": [type(cb).__name__ for cb in trainer.callbacks],
                "num_training_batches": trainer.num_training_batches,
            }
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            Probe.fits[-1]["batches"].append(batch[1].clone())

    def on_train_end(self, trainer, pl_module):
        Probe.fits[-1].update(
            end_epoch=trainer.current_epoch,
            zero_where_masked=effective_weights_zero_where_masked(pl_module),
        )


@pytest.fixture(autouse=True)
def _clear_probe():
    Probe.fits = []
    yield
    Probe.fits = []


def branch_fits() -> dict[str, dict]:
    return {Path(fit["log_dir"]).name: fit for fit in Probe.fits if "branches" in Path(fit["log_dir"]).parts}


class ShuffledClassifier(Classifier):
    """Shuffles its training data with the global RNG: the branches must still see one order."""

    def train_dataloader(self):
        return DataLoader(blobs(96, seed=0), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(blobs(40, seed=1), batch_size=16)


def fit(
    tmp_path: Path,
    callback: PruneAndBranchCallback,
    model: pl.LightningModule | None = None,
    max_epochs: int = 3,
    logger=True,
    extra_callbacks: tuple = (),
    emergence: bool = True,
    **trainer_kwargs,
) -> pl.Trainer:
    torch.manual_seed(0)
    model = model or Classifier(mlp(), lr=0.1)
    if logger is True:
        logger = TensorBoardLogger(str(tmp_path / "runs"), name="", version="")
    callbacks = [*([EmergenceCallback()] if emergence else []), Probe(), *extra_callbacks, callback]
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        **trainer_kwargs,
    )
    if isinstance(model, ShuffledClassifier):
        trainer.fit(model)
    else:
        train, val = loaders()
        trainer.fit(model, train, val)
    return trainer


def read_scalars_of_run(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Like `read_scalars`, for the event files right in ``run_dir`` (not its branches)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents*")):
        accumulator = event_accumulator.EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def by_name(callback: PruneAndBranchCallback) -> dict[str, dict]:
    return {result["name"]: result for result in callback.results}


# ---- the fork -------------------------------------------------------------------------------------
def test_branches_start_from_identical_weights_and_continue_the_parents_epochs(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.3, 0.7), verbose=False)
    trainer = fit(tmp_path, callback, max_epochs=3)
    model = trainer.lightning_module
    fork = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the parent stops at the fork
    assert trainer.current_epoch == 1
    fits = branch_fits()
    assert list(fits) == ["control", "pruned-30", "pruned-70"]
    assert all(torch.equal(fits["control"]["start"][k], fork[k]) for k in fork)
    for name in ("pruned-30", "pruned-70"):
        start = fits[name]["start"]
        for key, value in fork.items():
            if key.endswith("weight"):
                mask = start[key + "_mask"]
                assert torch.equal(start[key + "_orig"], value)  # the same weights, masked
                assert 0 < int((mask == 0).sum()) < mask.numel()
            else:
                assert torch.equal(start[key], value)
    for fit_ in fits.values():
        assert fit_["epoch_at_start"] == 1 and fit_["end_epoch"] == 3
        assert fit_["step_at_start"] == trainer.global_step
    assert {r["fork_fingerprint"] for r in callback.results} == {fingerprint(fork)}


def test_every_branch_sees_the_same_data_order(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), seed=7, verbose=False)
    fit(tmp_path, callback, model=ShuffledClassifier(mlp(), lr=0.1), max_epochs=3)
    fits = branch_fits()
    control, pruned = fits["control"]["batches"], fits["pruned-50"]["batches"]
    assert len(control) == len(pruned) == 2
    assert all(torch.equal(a, b) for a, b in zip(control, pruned))
    assert not torch.equal(control[0], control[1])  # shuffled anew each epoch, identically in each branch


def test_pruned_weights_stay_exactly_zero_through_training(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5, 0.7), verbose=False)
    fit(tmp_path, callback, max_epochs=3)
    fits = branch_fits()
    for name in ("pruned-50", "pruned-70"):
        assert fits[name]["zero_where_masked"]
        final = torch.load(by_name(callback)[name]["state_dict"])
        for key, value in fits[name]["start"].items():
            if key.endswith("_mask"):
                weight = final[key.removesuffix("_mask")]
                assert bool((weight[value == 0] == 0).all()), (name, key)
                assert bool((weight[value == 1] != 0).all()), (name, key)  # the kept ones trained on


class DriftingSGD(torch.optim.SGD):
    """Moves every weight a little after each step, zero or not: masked weights must be re-masked."""

    def step(self, closure=None):
        loss = super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    param.add_(1e-3)
        return loss


class DriftingClassifier(Classifier):
    def configure_optimizers(self):
        return DriftingSGD(self.parameters(), lr=self.lr)


def test_pruned_weights_stay_zero_with_an_optimizer_that_moves_zeros(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, model=DriftingClassifier(mlp(), lr=0.1), max_epochs=3)
    assert branch_fits()["pruned-50"]["zero_where_masked"]
    final = torch.load(by_name(callback)["pruned-50"]["state_dict"])
    start = branch_fits()["pruned-50"]["start"]
    for key, mask in start.items():
        if key.endswith("_mask"):
            assert bool((final[key.removesuffix("_mask")][mask == 0] == 0).all()), key


class RawOptimizerClassifier(Classifier):
    """Manual optimization with the raw torch optimizer: no `on_before_optimizer_step` at all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers(use_pl_optimizer=False)
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


class NoisyGradientClassifier(Classifier):
    """Adds noise to every gradient after the callbacks' `on_before_optimizer_step` has run."""

    def on_before_optimizer_step(self, optimizer):
        for param in self.parameters():
            if param.grad is not None:
                param.grad.add_(1e-3 * torch.randn_like(param.grad))


@pytest.mark.parametrize("model_class", [RawOptimizerClassifier, NoisyGradientClassifier])
def test_pruned_weights_stay_zero_when_gradients_reach_the_step_unmasked(tmp_path, model_class):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, model=model_class(mlp(), lr=0.1), max_epochs=3)
    assert by_name(callback)["pruned-50"]["status"] == "finished"
    assert branch_fits()["pruned-50"]["zero_where_masked"]  # at the end of training, before re-masking


def test_effective_parameter_counts(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.3, 0.5, 0.7), verbose=False)
    fit(tmp_path, callback, max_epochs=2)
    net = mlp()
    dense = count_parameters(net)
    weights = sum(m.weight.numel() for m in net if isinstance(m, nn.Linear))
    results = by_name(callback)
    assert results["control"]["parameters"] == dense == results["control"]["parameters_dense"]
    for amount in (0.3, 0.5, 0.7):
        # Global magnitude pruning removes round(amount * all weights); biases stay.
        assert results[f"pruned-{round(amount * 100)}"]["parameters"] == dense - round(amount * weights)


def test_structured_pruning_removes_whole_nodes(tmp_path):
    callback = PruneAndBranchCallback(
        branch_epoch=1, amounts=(0.5,), pruning_fn="ln_structured", verbose=False
    )
    fit(tmp_path, callback, max_epochs=2)
    final = torch.load(by_name(callback)["pruned-50"]["state_dict"])
    for layer, width, fan_in in (("net.0", 16, 8), ("net.2", 12, 16)):
        weight, bias = final[f"{layer}.weight"], final[f"{layer}.bias"]
        assert tuple(weight.shape) == (width, fan_in)
        removed = (weight == 0).all(dim=1)
        assert int(removed.sum()) == width // 2
        assert bool((bias[removed] == 0).all())  # a removed node outputs exactly zero
    assert not bool((final["net.4.weight"] == 0).all(dim=1).any())  # the output layer keeps every class
    expected = count_parameters(mlp()) - 8 * (8 + 1) - 6 * (16 + 1)
    assert by_name(callback)["pruned-50"]["parameters"] == expected


def test_emergence_measured_at_the_fork_and_at_the_end(tmp_path):
    model = Classifier(mlp(), lr=0.1)
    with torch.no_grad():
        model.net[0].bias[:6] = -5.0  # dead nodes, so E > 0
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, model=model, max_epochs=3)
    for result in callback.results:
        assert result["E_fork"] > 0 and result["E_end"] is not None
        assert result["relative_E_fork"] == pytest.approx(result["E_fork"] / result["parameters"])
        assert [epoch for epoch, _ in result["history"]["E"]] == [1, 2, 3]
    control = read_scalars(tmp_path / "runs" / "branches" / "control")
    assert [v for _, v in control["emergence/epoch"]] == [1.0, 2.0, 3.0]
    assert control["emergence/E"][0][1] == pytest.approx(by_name(callback)["control"]["E_fork"])
    # The fork measurement is logged at the fork's step with Lightning's `epoch` at the fork epoch.
    assert (control["emergence/E"][0][0], dict(control["epoch"])[control["emergence/E"][0][0]]) == (6, 1.0)


def effective_model(state: dict[str, torch.Tensor]) -> Classifier:
    """A plain copy of a branch's start state: pruned weights as `weight_orig * weight_mask`."""
    plain = {k: v for k, v in state.items() if not k.endswith(("_orig", "_mask"))}
    for key in state:
        if key.endswith("_orig"):
            name = key.removesuffix("_orig")
            plain[name] = state[key] * state[name + "_mask"]
    model = Classifier(mlp())
    model.load_state_dict(plain)
    return model


def test_path_exact_emergence_at_the_fork_and_at_the_end(tmp_path):
    model = Classifier(mlp(), lr=0.1)
    with torch.no_grad():
        model.net[0].bias[:6] = -5.0  # dead nodes, so E > 0
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(
        tmp_path,
        callback,
        model=model,
        max_epochs=3,
        emergence=False,
        extra_callbacks=(EmergenceCallback(connectivity="weights"),),
    )
    results = by_name(callback)
    for result in results.values():
        for key in ("E_path_fork", "E_path_end"):
            assert isinstance(result[key], int) and not isinstance(result[key], bool), (result["name"], key)
        for when in ("fork", "end"):
            assert result[f"relative_E_path_{when}"] == pytest.approx(
                result[f"E_path_{when}"] / result["parameters"]
            )
            # Consecutive layers only: the weights' graph never has more paths than the dense formula counts.
            assert result[f"E_path_{when}"] <= result[f"E_{when}"]
    control, pruned = results["control"], results["pruned-50"]
    assert control["E_path_fork"] == control["E_fork"] > 0  # trained weights: no zero, every edge there
    # Pruning removes edges: the path-exact E falls below the pruned branch's own dense E (always, with
    # consecutive layers) and, in this seeded run (17 against 66), below the control's.
    assert pruned["E_path_fork"] < pruned["E_fork"]
    assert pruned["E_path_fork"] < control["E_path_fork"]
    assert pruned["relative_E_path_fork"] < control["relative_E_path_fork"]
    # The same count, independently: each branch's start weights and the validation data by hand (the
    # two ReLU layers' node means against theta = 0.05; an edge wherever the Linear between them has a
    # non-zero weight), every path enumerated by the brute-force counter.
    _, val = loaders()
    x = torch.cat([x for x, _ in val]).double()
    for name, fit_ in branch_fits().items():
        net = effective_model(fit_["start"]).net.double()
        with torch.no_grad():
            first = torch.relu(net[0](x))
            second = torch.relu(net[2](first))
        active = [first.mean(0) > 0.05, second.mean(0) > 0.05]
        edges = {(0, 1): (net[2].weight != 0).T}  # (16 nodes of layer 0, 12 of layer 1)
        assert results[name]["E_path_fork"] == count_paths(edges, active), name
    # The files and the table carry them; TensorBoard gets the end value beside summary/E_end.
    with open(tmp_path / "runs" / "branches" / "summary.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    for column in ("E_path_fork", "relative_E_path_fork", "E_path_end", "relative_E_path_end"):
        assert rows["pruned-50"][column] != ""
    assert int(rows["pruned-50"]["E_path_fork"]) == pruned["E_path_fork"]
    summary = json.loads((tmp_path / "runs" / "branches" / "summary.json").read_text())
    assert [b["E_path_end"] for b in summary["branches"]] == [control["E_path_end"], pruned["E_path_end"]]
    table = callback.summary_table()
    assert "E_path fork" in table and "E~path end" in table
    for name, result in results.items():
        scalars = read_scalars(tmp_path / "runs" / "branches" / name)
        assert scalars["summary/E_path_end"][-1][1] == pytest.approx(result["E_path_end"])
        assert scalars["summary/relative_E_path_end"][-1][1] == pytest.approx(result["relative_E_path_end"])


def test_no_path_exact_emergence_with_dense_connectivity(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, max_epochs=2)  # EmergenceCallback() counts on the dense formula only
    for result in callback.results:
        assert result["E_fork"] is not None
        assert all(result[key] is None for key in PATH_COLUMNS)
    with open(tmp_path / "runs" / "branches" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row[key] == "" for row in rows for key in PATH_COLUMNS)
    assert "E_path" not in callback.summary_table()  # the table is not widened
    control = read_scalars(tmp_path / "runs" / "branches" / "control")
    assert "summary/E_end" in control and not any(key.startswith("summary/E_path") for key in control)


def test_branch_callbacks_are_fresh_copies(tmp_path):
    early = EarlyStopping(monitor="val_loss", patience=50)
    callback = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, max_epochs=3, extra_callbacks=(early,))
    assert early.wait_count >= 0 and early.best_score < math.inf  # the parent's own, used
    fits = branch_fits()
    for fit_ in fits.values():
        assert "EmergenceCallback" in fit_["callbacks"] and "EarlyStopping" in fit_["callbacks"]
        assert "PruneAndBranchCallback" not in fit_["callbacks"]
    # Each branch's EmergenceCallback starts its history at the fork, not with the parent's records.
    assert all(r["history"]["E"][0][0] == 2 for r in callback.results)


def test_random_controls_and_other_data(tmp_path):
    other_train = DataLoader(blobs(48, seed=5), batch_size=16)
    other_val = DataLoader(blobs(32, seed=6), batch_size=16)
    callback = PruneAndBranchCallback(
        branch_epoch=1,
        amounts=(0.5,),
        random_controls=True,
        branch_train_dataloaders=other_train,
        branch_val_dataloaders=other_val,
        verbose=False,
    )
    trainer = fit(tmp_path, callback, max_epochs=2)
    fork = trainer.lightning_module.state_dict()
    fits = branch_fits()
    assert list(fits) == ["control", "pruned-50", "random-dense", "random-pruned-50"]
    assert all(fit_["num_training_batches"] == 3 for fit_ in fits.values())  # 48 samples, not the parent's 96
    dense, pruned = fits["random-dense"]["start"], fits["random-pruned-50"]["start"]
    assert not torch.equal(dense["net.0.weight"], fork["net.0.weight"])  # re-initialised
    assert torch.equal(pruned["net.0.weight_orig"], dense["net.0.weight"])  # one draw, then masked
    for key in ("net.0.weight_mask", "net.2.weight_mask", "net.4.weight_mask"):
        assert torch.equal(pruned[key], fits["pruned-50"]["start"][key])  # the pruned branch's mask
    assert by_name(callback)["random-pruned-50"]["parameters"] == by_name(callback)["pruned-50"]["parameters"]


# ---- results, files, TensorBoard -------------------------------------------------------------------
def test_results_files_and_weights(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.3, 0.7), verbose=False)
    fit(tmp_path, callback, max_epochs=3)
    root = tmp_path / "runs" / "branches"
    assert callback.branches_dir == root
    with open(root / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["control", "pruned-30", "pruned-70"]
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert {row["status"] for row in rows} == {"finished"}
    summary = json.loads((root / "summary.json").read_text())
    assert summary["monitor"] == "val_acc" and summary["mode"] == "max" and summary["fork_epoch"] == 1
    assert [b["name"] for b in summary["branches"]] == ["control", "pruned-30", "pruned-70"]
    for result in callback.results:
        assert result["final"] == pytest.approx(result["history"]["value"][-1])
        assert result["best"] == max(result["history"]["value"])
        assert 1 <= result["epochs_to_99"] <= result["epochs"] == 2
        assert result["wall_time_s"] > 0 and 0 <= result["setup_s"] < result["wall_time_s"]
        assert json.loads((root / result["name"] / RESULT_FILE).read_text())["status"] == "finished"
        state = torch.load(result["state_dict"])
        fresh = Classifier(mlp())
        fresh.load_state_dict(state)  # a plain state dict: pruning made permanent
        assert not any(key.endswith(("_orig", "_mask")) for key in state)
    assert not list(root.rglob("*.tmp"))  # atomic writes leave no temporary file


def test_tensorboard_runs_overlay(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, max_epochs=3)
    root = tmp_path / "runs" / "branches"
    control, pruned = read_scalars(root / "control"), read_scalars(root / "pruned-50")
    assert control.keys() == pruned.keys()
    assert {
        "emergence/E",
        "emergence/relative",
        "val_acc",
        "epoch",
        "summary/final_val_acc",
    } <= control.keys()
    # The parent validated at step 5 (end of epoch 1); the branches go on where it would have.
    assert [s for s, _ in read_scalars_of_run(tmp_path / "runs")["val_acc"]] == [5]
    assert [s for s, _ in control["val_acc"]] == [s for s, _ in pruned["val_acc"]] == [11, 17]
    assert sorted({v for _, v in control["epoch"]}) == [1.0, 2.0]
    # `fit` uses Lightning's default logger (default_hp_metric=True): no placeholder entry hides the columns.
    parent = read_scalars_of_run(tmp_path / "runs")
    assert "hp_metric" not in parent
    columns = set()
    for run_dir, name, amount in (
        (tmp_path / "runs", "parent", 0.0), (root / "control", "control", 0.0), (root / "pruned-50", "pruned-50", 0.5),
    ):  # fmt: skip
        accumulator = EventAccumulator(str(run_dir))
        accumulator.Reload()
        content = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)  # a run's first entry only
        start = hparams_metadata.parse_session_start_info_plugin_data(
            content[hparams_metadata.SESSION_START_INFO_TAG]
        )
        assert start.hparams["branch/amount"].number_value == pytest.approx(amount)
        assert start.hparams["branch/name"].string_value == name
        assert start.hparams["emergence/threshold"].number_value == pytest.approx(
            EmergenceCallback().threshold
        )
        experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
        # TensorBoard takes every column from one run's entry: each run lists the same ones.
        run_columns = (
            frozenset(info.name.tag for info in experiment.metric_infos),
            frozenset(info.name for info in experiment.hparam_infos),
        )
        columns.add(run_columns)
        assert {"summary/final_val_acc", "summary/best_val_acc", "summary/E_end", "summary/log10_E_end",
                "summary/relative_E_end"} <= run_columns[0]  # fmt: skip
        assert {"branch/name", "branch/amount", "branch/pruning_fn"} <= run_columns[1]
        assert "custom_scalars__config__" in accumulator.Tags()["tensors"]
        # The summary's values, against the run's own per-epoch scalars.
        scalars = read_scalars_of_run(run_dir)
        assert scalars["summary/final_val_acc"][-1][1] == pytest.approx(scalars["val_acc"][-1][1])
        assert scalars["summary/best_val_acc"][-1][1] == pytest.approx(max(v for _, v in scalars["val_acc"]))
        E_end = scalars["emergence/E"][-1][1]
        assert scalars["summary/E_end"][-1][1] == pytest.approx(E_end)
        assert scalars["summary/log10_E_end"][-1][1] == pytest.approx(math.log10(E_end + 1))  # log10(E + 1)
    assert len(columns) == 1


def test_csv_logger_branches(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, max_epochs=2, logger=CSVLogger(str(tmp_path / "csv"), name="", version=""))
    for name in ("control", "pruned-50"):
        assert (tmp_path / "csv" / "branches" / name / "metrics.csv").is_file()
    assert (tmp_path / "csv" / "branches" / "summary.csv").is_file()


def test_no_logger_warns_and_writes_under_the_root_dir(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    with pytest.warns(UserWarning, match=r"no logger, so the branches log nothing; results go to .*branches"):
        fit(tmp_path, callback, max_epochs=2, logger=False)
    assert (tmp_path / "branches" / "summary.csv").is_file()
    assert (tmp_path / "branches" / "pruned-50" / "final_state_dict.pt").is_file()


def test_summary_table_is_printed(tmp_path, caplog):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,))
    with caplog.at_level("INFO"):
        fit(tmp_path, callback, max_epochs=2)
    assert "Prune and branch: branches forked after epoch 1" in caplog.text
    assert "pruned-50" in callback.summary_table() and "final val_acc" in callback.summary_table()


# ---- failures and resuming -------------------------------------------------------------------------
class Fragile(Classifier):
    """Fails in the pruned branches: 70% raises, 50% gets a NaN loss; `healed` turns both off."""

    healed = False

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        kept = count_parameters(self)
        if not Fragile.healed and kept < 150:
            raise RuntimeError(f"boom with {kept} parameters")
        if not Fragile.healed and kept < 250:
            return loss * float("nan")
        return loss


@pytest.fixture
def fragile():
    Fragile.healed = False
    yield Fragile
    Fragile.healed = False


def test_a_failing_branch_is_recorded_and_the_others_run(tmp_path, fragile):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5, 0.7, 0.3), verbose=False)
    with pytest.warns(UserWarning, match=r"branch 'pruned-70' failed: RuntimeError: boom with"):
        fit(tmp_path, callback, model=fragile(mlp(), lr=0.1), max_epochs=3)
    results = by_name(callback)
    assert [r["name"] for r in callback.results] == ["control", "pruned-50", "pruned-70", "pruned-30"]
    assert results["pruned-70"]["status"] == "failed" and "boom with" in results["pruned-70"]["error"]
    assert results["pruned-50"]["status"] == "failed"
    assert results["pruned-50"]["error"].startswith("FloatingPointError: the training loss was NaN")
    assert results["pruned-50"]["state_dict"] is None
    assert results["control"]["status"] == results["pruned-30"]["status"] == "finished"
    rows = list(csv.DictReader((tmp_path / "runs" / "branches" / "summary.csv").read_text().splitlines()))
    assert [row["status"] for row in rows] == ["finished", "failed", "failed", "finished"]
    assert "pruned-70 failed: RuntimeError: boom with" in callback.summary_table()


class NamedWeights(Classifier):
    """Hands the optimizer `layer.weight` tensors by name: pruning replaces them by `weight_orig`."""

    def configure_optimizers(self):
        return torch.optim.SGD([self.net[0].weight, self.net[0].bias], lr=self.lr)


def test_optimizing_a_pruned_weight_by_name_fails_the_branch_clearly(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    with pytest.warns(
        UserWarning, match=r"branch 'pruned-50' failed: RuntimeError: `configure_optimizers` hands"
    ):
        fit(tmp_path, callback, model=NamedWeights(mlp(), lr=0.1), max_epochs=2)
    assert [r["status"] for r in callback.results] == ["finished", "failed"]


def test_rerun_skips_finished_branches_and_reruns_failed_ones(tmp_path, fragile):
    first = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5, 0.7), verbose=False)
    torch.manual_seed(
        0
    )  # the model is built before `fit` seeds: the same weights in both runs, run alone or not
    with pytest.warns(UserWarning, match="failed"):
        fit(tmp_path, first, model=fragile(mlp(), lr=0.1), max_epochs=3)
    root = tmp_path / "runs" / "branches"
    control_events = sorted((root / "control").glob("events.out.tfevents*"))
    fragile.healed = True
    Probe.fits = []
    second = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5, 0.7), verbose=False)
    torch.manual_seed(0)
    fit(tmp_path, second, model=fragile(mlp(), lr=0.1), max_epochs=3)
    results = by_name(second)
    assert list(branch_fits()) == ["pruned-50", "pruned-70"]  # only the failed ones ran again
    assert results["control"]["resumed"] and not results["pruned-50"]["resumed"]
    assert results["control"].to_dict() == {**by_name(first)["control"].to_dict(), "resumed": True} | {
        "history": results["control"]["history"]
    }
    assert {r["status"] for r in second.results} == {"finished"}
    assert sorted((root / "control").glob("events.out.tfevents*")) == control_events
    assert len(list((root / "pruned-70").glob("events.out.tfevents*"))) == 1  # the failed run's events went
    assert [b["status"] for b in json.loads((root / "summary.json").read_text())["branches"]] == [
        "finished"
    ] * 3


def test_resume_off_reruns_everything(tmp_path):
    fit(tmp_path, PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False), max_epochs=2)
    Probe.fits = []
    again = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), resume=False, verbose=False)
    fit(tmp_path, again, max_epochs=2)
    assert list(branch_fits()) == ["control", "pruned-50"]
    assert not any(r["resumed"] for r in again.results)


def test_parent_stopped_before_the_fork_runs_no_branch(tmp_path):
    class StopNow(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    callback = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False)
    with pytest.warns(UserWarning, match=r"stopped after 1 epochs, before `branch_epoch`=2"):
        fit(tmp_path, callback, max_epochs=4, extra_callbacks=(StopNow(),))
    assert callback.results == [] and not (tmp_path / "runs" / "branches").exists()


def test_state_dict_round_trip(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path, callback, max_epochs=2)
    restored = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,))
    restored.load_state_dict(callback.state_dict())
    assert restored.results == callback.results and restored._forked
    assert (
        callback.state_key
        == "PruneAndBranchCallback{'branch_epoch': 1, 'amounts': (0.5,), 'pruning_fn': 'l1_unstructured'}"
    )


# ---- DDP: 2 processes --------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, str(DDP_SCRIPT), "--devices", "2", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for report in ranks:
        assert report["world_size"] == 2 and report["initialized"]
        assert [(r["name"], r["status"]) for r in report["results"]] == [
            ("control", "finished"),
            ("pruned-50", "finished"),
        ]
        fits = report["fits"]
        assert [Path(f["log_dir"]).name for f in fits] == ["out", "control", "pruned-50"]
        assert all(f["world_size"] == 2 and f["strategy"] == "DDPStrategy" and f["ddp_wrapped"] for f in fits)
        assert [f["epoch"] for f in fits] == [2, 4, 4]
        assert fits[2]["masked_entries"] > 0 and fits[2]["masked_entries_zero"]
    # Same fork and the same trained weights in both processes: the branches really ran under DDP.
    assert ranks[0]["fork_fingerprint"] == ranks[1]["fork_fingerprint"]
    assert [f["weights"] for f in ranks[0]["fits"]] == [f["weights"] for f in ranks[1]["fits"]]
    rows = list(csv.DictReader((out / "branches" / "summary.csv").read_text().splitlines()))
    assert [(row["name"], row["status"]) for row in rows] == [
        ("control", "finished"),
        ("pruned-50", "finished"),
    ]
    final = torch.load(out / "branches" / "pruned-50" / "final_state_dict.pt")
    assert (
        sum(int((final[k] == 0).sum()) for k in final if k.endswith("weight"))
        >= ranks[0]["fits"][2]["masked_entries"]
    )


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amounts": (0.3, 1.0)}, r"`amounts` must hold fractions in \[0, 1\), got 1.0"),
        ({"amounts": (-0.1,)}, r"`amounts` must hold fractions in \[0, 1\), got -0.1"),
        ({"amounts": ()}, r"`amounts` must be a non-empty sequence of fractions in \[0, 1\), got \(\)"),
        ({"amounts": (0.3, 0.5, 0.3)}, r"`amounts` must be distinct .* pruned-30 more than once"),
        ({"amounts": (0.3, 0.301)}, r"`amounts` must be distinct .*got \(0.3, 0.301\)"),
        ({"amounts": ("a",)}, r"`amounts` must hold fractions in \[0, 1\), got 'a'"),
        ({"branch_epoch": 0}, r"`branch_epoch` must be an int >= 1, got 0"),
        ({"branch_epoch": True}, r"`branch_epoch` must be an int >= 1, got True"),
        (
            {"pruning_fn": "l2_unstructured"},
            r"`pruning_fn` must be one of .*'l1_unstructured'.*got 'l2_unstructured'",
        ),
        (
            {"pruning_fn": "ln_structured", "use_global_unstructured": True},
            r"`use_global_unstructured=True` works with unstructured pruning only, got `pruning_fn`='ln_structured'",
        ),
        ({"parameter_names": ()}, r"`parameter_names` must be a non-empty sequence of names, got \(\)"),
        (
            {"parameter_names": "weight"},
            r"`parameter_names` must be a non-empty sequence of names, got 'weight'",
        ),
        ({"modules": []}, r"`modules` must be None or a non-empty sequence of module names, got \[\]"),
        ({"mode": "up"}, r"`mode` must be 'min', 'max' or None, got 'up'"),
        ({"trainer_kwargs": {"callbacks": []}}, r"`trainer_kwargs` may not set \['callbacks'\]"),
        ({"branch_val_dataloaders": [1]}, r"`branch_val_dataloaders` needs `branch_train_dataloaders` too"),
        (
            {"branch_datamodule": pl.LightningDataModule(), "branch_train_dataloaders": [1]},
            r"Pass either `branch_datamodule` or `branch_train_dataloaders`",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneAndBranchCallback(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amounts": 0.5}, r"`amounts` must be a non-empty sequence of fractions in \[0, 1\), got 0.5"),
        ({"seed": 1.5}, r"`seed` must be an int, got 1.5"),
        ({"pruning_dim": "0"}, r"`pruning_dim` must be an int, got '0'"),
        ({"branch_datamodule": object()}, r"`branch_datamodule` must be a LightningDataModule, got object"),
    ],
)
def test_arguments_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        PruneAndBranchCallback(**kwargs)


def test_branch_epoch_not_below_max_epochs(tmp_path):
    with pytest.raises(ValueError, match=r"`branch_epoch`=3 must be below the Trainer's `max_epochs`, got 3"):
        fit(tmp_path, PruneAndBranchCallback(branch_epoch=3), max_epochs=3)
    with pytest.raises(
        ValueError, match=r"`branch_epoch`=5 must be below the Trainer's `max_epochs`, got max_epochs=3"
    ):
        fit(tmp_path, PruneAndBranchCallback(branch_epoch=5), max_epochs=3)


def test_branch_epoch_against_trainer_kwargs_max_epochs(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=2, trainer_kwargs={"max_epochs": 2})
    with pytest.raises(
        ValueError, match=r"must be below the Trainer's `trainer_kwargs\['max_epochs'\]`, got 2"
    ):
        fit(tmp_path, callback, max_epochs=3)


def test_min_epochs_past_the_fork(tmp_path):
    with pytest.raises(ValueError, match=r"`min_epochs`=3 keeps the parent training past `branch_epoch`=1"):
        fit(tmp_path, PruneAndBranchCallback(branch_epoch=1), max_epochs=4, min_epochs=3)


class NoLinear(Classifier):
    def __init__(self):
        super().__init__(nn.Identity())
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return (x * self.scale)[:, :3]


def test_no_prunable_module(tmp_path):
    with pytest.raises(ValueError, match=r"NoLinear has no module to prune: no nn.Linear or nn.Conv\*d"):
        fit(tmp_path, PruneAndBranchCallback(branch_epoch=1), model=NoLinear(), max_epochs=2, emergence=False)


def test_parameter_names_the_modules_lack(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, parameter_names=("weight", "gain"))
    with pytest.raises(
        ValueError, match=r"`parameter_names` includes 'gain', but module 'net.0' \(Linear\) has no such"
    ):
        fit(tmp_path, callback, max_epochs=2)


def test_unknown_module_names(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, modules=["net.0", "net.9"])
    with pytest.raises(ValueError, match=r"`modules` names \['net.9'\], which Classifier does not have"):
        fit(tmp_path, callback, max_epochs=2)


def test_spawned_processes_are_refused():
    with pytest.raises(
        ValueError,
        match=r"must be single-device or `strategy='ddp'`.*got DDPStrategy\(start_method='spawn'\)",
    ):
        check_strategy(DDPStrategy(start_method="spawn"))


def test_resumed_past_the_fork(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,))
    trainer = pl.Trainer(max_epochs=3, logger=False, callbacks=[callback], enable_progress_bar=False)
    trainer.fit_loop.epoch_progress.current.completed = 2
    with pytest.raises(RuntimeError, match=r"training resumed at epoch 2, past `branch_epoch`=1"):
        callback.on_train_start(trainer, Classifier(mlp()))


# ---- the pure helpers --------------------------------------------------------------------------------
def test_check_amounts():
    assert check_amounts([0, 0.25, 0.5]) == (0.0, 0.25, 0.5)
    with pytest.raises(
        TypeError, match=r"`amounts` must be a non-empty sequence of fractions in \[0, 1\), got 'ab'"
    ):
        check_amounts("ab")
    with pytest.raises(
        ValueError, match=r"got 30 in \(30, 50, 70\)\. Percents\? Did you mean \(0\.3, 0\.5, 0\.7\)\?"
    ):
        check_amounts((30, 50, 70))
    with pytest.raises(ValueError, match=r"got 1\.2 in \(0\.3, 1\.2\)\.$"):  # no hint: not all percents
        check_amounts((0.3, 1.2))


def test_prune_model_per_layer_and_random():
    net = mlp()
    prune_model(net, 0.5, use_global_unstructured=False)
    for qualified, mask in masks(net).items():
        assert int((mask == 0).sum()) == round(0.5 * mask.numel()), qualified
    first, second = (
        prune_model(mlp(), 0.5, "random_unstructured"),
        prune_model(mlp(), 0.5, "random_unstructured"),
    )
    assert count_parameters(first) == count_parameters(second)
    with pytest.raises(ValueError, match=r"`amount` must be a fraction in \[0, 1\), got 1.5"):
        prune_model(mlp(), 1.5)


def test_masks_apply_and_permanent_state_dict():
    source = prune_model(mlp(), 0.6)
    target = apply_masks(mlp(), masks(source))
    assert count_parameters(target) == count_parameters(source)
    assert effective_weights_zero_where_masked(target)
    state = permanent_state_dict(source)
    assert set(state) == set(mlp().state_dict())
    copy_ = mlp()
    copy_.load_state_dict(state)
    assert sum(int((m.weight == 0).sum()) for m in copy_ if isinstance(m, nn.Linear)) >= round(
        0.6 * sum(m.weight.numel() for m in copy_ if isinstance(m, nn.Linear))
    )


def test_reinitialize_reports_modules_it_cannot_reset():
    model = NoLinear()
    torch.manual_seed(0)
    assert reinitialize(model) == ["NoLinear"]


def test_find_prunable_skips_the_output_layer_for_structured_pruning():
    names = [name for name, _, _ in find_prunable(mlp(), skip_last=True)]
    assert names == ["0", "2"]


def test_monitor_and_convergence_helpers():
    assert pick_monitor(["train_loss", "val_loss", "emergence/E"]) == ("val_loss", "min")
    assert pick_monitor(["train_acc", "emergence/E"]) == ("train_acc", "max")
    assert pick_monitor(["train_loss"]) is None
    assert epochs_to_fraction_of_final([0.2, 0.5, 0.9, 0.99, 1.0]) == 4
    assert epochs_to_fraction_of_final([1.0, 0.5, 0.4], mode="min") == 3
    assert epochs_to_fraction_of_final([0.1, float("nan")]) is None
    with pytest.raises(ValueError, match=r"`mode` must be 'max' or 'min', got 'best'"):
        epochs_to_fraction_of_final([1.0], mode="best")


def test_lightning_cli_save_config_callback_is_left_out_of_the_branches_silently(tmp_path, recwarn):
    """A real LightningCLI fit: its SaveConfigCallback (holding the CLI's parser) is not copied, with no warning."""
    pytest.importorskip(
        "jsonargparse", reason="LightningCLI needs jsonargparse (the `test` extra installs it)"
    )
    import runpy

    import yaml

    example = Path(__file__).resolve().parents[2] / "examples" / "lightning_cli"
    config = yaml.safe_load((example / "config.yaml").read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    config["trainer"].update(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False
    )
    config["trainer"]["callbacks"][1]["init_args"].update(branch_epoch=1, amounts=[0.5], verbose=False)
    config["model"]["init_args"]["hidden"] = [8]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cli = runpy.run_path(str(example / "main.py"))["main"](["fit", "--config", str(tmp_path / "config.yaml")])
    assert not [w for w in recwarn if "could not copy" in str(w.message)]
    log_dir = Path(cli.trainer.logger.log_dir)
    assert (log_dir / "config.yaml").is_file()  # the parent saved its configuration as usual
    branches = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PruneAndBranchCallback))
    assert [result["status"] for result in branches.results] == ["finished", "finished"]
    assert not list((log_dir / "branches").rglob("config.yaml"))
