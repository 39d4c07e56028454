"""An experiment is everything that changes its numbers: a rerun with any other setting is refused, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tiny_models import Classifier, blobs, loaders, mlp
from torch.utils.data import DataLoader

from emergence_lightning.branching.store import EXPERIMENT_FILE, RESULT_FILE, ExperimentMismatchError
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback

pytestmark = pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")


class StepCounter(pl.Callback):
    """Counts the parent's training batches (branches get copies of it: a class attribute)."""

    batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        StepCounter.batches += 1


def _fit(
    root: Path,
    threshold: float = 0.05,
    amounts: tuple = (0.3,),
    val_samples: int = 40,
    **kwargs,
) -> PruneAndBranchCallback:
    torch.manual_seed(0)
    StepCounter.batches = 0
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=amounts, verbose=False, **kwargs)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[EmergenceCallback(threshold=threshold, statistic="mean"), StepCounter(), callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        deterministic=True,
    )
    train, _ = loaders()
    trainer.fit(Classifier(mlp(), lr=0.1), train, DataLoader(blobs(val_samples, seed=1), batch_size=16))
    return callback


def test_another_emergence_threshold_and_one_more_amount_is_refused_before_training(tmp_path):
    _fit(tmp_path, threshold=0.05, amounts=(0.3,))
    with pytest.raises(
        ExperimentMismatchError, match=r"settings `emergence.threshold`: 0.05 there, 0.5 now"
    ) as error:
        _fit(tmp_path, threshold=0.5, amounts=(0.3, 0.5))
    assert StepCounter.batches == 0  # refused at `setup`: the parent did not train
    assert "amounts" not in str(error.value)  # another amount is no other experiment
    summary = json.loads((tmp_path / "branches" / "summary.json").read_text())
    assert [branch["name"] for branch in summary["branches"]] == ["control", "pruned-30"]


def test_other_branch_trainer_settings_are_refused_naming_each(tmp_path):
    _fit(tmp_path, trainer_kwargs={"limit_train_batches": 4})
    with pytest.raises(ExperimentMismatchError) as error:
        _fit(tmp_path, trainer_kwargs={"limit_train_batches": 2, "gradient_clip_val": 1.0})
    message = str(error.value)
    assert "settings `trainer.limit_train_batches`: 4 there, 2 now" in message
    assert "settings `trainer.gradient_clip_val`: None there, 1.0 now" in message
    assert StepCounter.batches == 0


def test_the_same_settings_with_one_more_amount_resume_and_add_it(tmp_path):
    first = _fit(tmp_path, amounts=(0.3,))
    second = _fit(tmp_path, amounts=(0.3, 0.5))
    assert [(r["name"], r["resumed"]) for r in second.results] == [
        ("control", True),
        ("pruned-30", True),
        ("pruned-50", False),
    ]
    ids = {r["experiment"] for r in [*first.results, *second.results]}
    assert len(ids) == 1
    summary = json.loads((tmp_path / "branches" / "summary.json").read_text())
    assert summary["experiment"] in ids
    assert [branch["name"] for branch in summary["branches"]] == ["control", "pruned-30", "pruned-50"]


def test_other_data_sizes_are_refused_at_the_fork(tmp_path):
    _fit(tmp_path, val_samples=40)
    # The validation data do not move the weights: only the data record tells the two runs apart.
    with pytest.raises(
        ExperimentMismatchError, match=r"data `val`: .*'samples': 40.* there, .*'samples': 24.* now"
    ):
        _fit(tmp_path, val_samples=24)


def test_the_record_holds_every_setting(tmp_path):
    _fit(tmp_path, trainer_kwargs={"limit_train_batches": 4})
    record = json.loads((tmp_path / "branches" / EXPERIMENT_FILE).read_text())
    settings = record["settings"]
    assert settings["emergence"]["threshold"] == 0.05 and settings["emergence"]["statistic"] == "mean"
    assert settings["trainer"]["limit_train_batches"] == 4
    assert settings["trainer"]["max_epochs"] == 2 and settings["trainer"]["processes"] == 1
    assert "default_root_dir" not in settings["trainer"]  # where it writes changes no number
    assert settings["pruning_fn"] == "l1_unstructured" and settings["branch_epoch"] == 1
    assert record["data"] == {
        "train": [{"samples": 96, "batch_size": 16, "drop_last": False}],
        "val": [{"samples": 40, "batch_size": 16, "drop_last": False}],
    }


def test_a_result_of_another_experiment_is_neither_resumed_nor_summarised(tmp_path):
    _fit(tmp_path)
    path = tmp_path / "branches" / "pruned-30" / RESULT_FILE
    foreign = {**json.loads(path.read_text()), "experiment": "another", "E_end": -1}
    path.write_text(json.dumps(foreign))
    callback = _fit(tmp_path)
    assert [(r["name"], r["resumed"]) for r in callback.results] == [("control", True), ("pruned-30", False)]
    summary = json.loads((tmp_path / "branches" / "summary.json").read_text())
    assert all(branch["experiment"] == summary["experiment"] for branch in summary["branches"])
    assert json.loads(path.read_text())["experiment"] == summary["experiment"]  # trained again, rewritten


def test_a_branch_job_on_another_number_of_processes_is_refused(tmp_path):
    from emergence_lightning.callbacks import run_saved_branches

    _fit(tmp_path, only=[])  # the parent and its saved fork: the experiment trains branches on 1 process
    with pytest.raises(ExperimentMismatchError, match=r"settings `trainer.processes`: 1 there, 2 now"):
        run_saved_branches(tmp_path, ["control"], trainer_kwargs={"devices": 2}, verbose=False)
    assert not (tmp_path / "branches" / "control" / RESULT_FILE).exists()
