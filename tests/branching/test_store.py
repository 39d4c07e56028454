"""Results bound to their experiment: a rerun resumes its own branches; another experiment is refused."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator
from tiny_models import Classifier, loaders, mlp

from emergence_lightning.branching.store import EXPERIMENT_FILE, ExperimentMismatchError
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.paper import experiments


def _fit(root: Path, net_seed: int = 0, hidden=(16, 12), **kwargs) -> PruneAndBranchCallback:
    """A fit with no logger: the branches go to `<root>/branches`, the folder two experiments can share."""
    torch.manual_seed(net_seed)
    model = Classifier(mlp(hidden=hidden), lr=0.1)
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False, **kwargs)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        deterministic=True,
    )
    trainer.fit(model, *loaders())
    return callback


@pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")
def test_a_rerun_of_the_same_experiment_resumes_it(tmp_path):
    first = _fit(tmp_path)
    assert [r["resumed"] for r in first.results] == [False, False]
    record = json.loads((tmp_path / "branches" / EXPERIMENT_FILE).read_text())
    assert record["fork_weights"] == first.fork.fingerprint
    second = _fit(tmp_path)
    assert [r["resumed"] for r in second.results] == [True, True]
    assert [r["parameters"] for r in second.results] == [r["parameters"] for r in first.results]


@pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")
def test_another_architecture_in_the_same_folder_is_refused_before_training(tmp_path):
    _fit(tmp_path)
    directory = tmp_path / "branches"
    with pytest.raises(
        ExperimentMismatchError,
        match=rf"{directory} holds the branches of another experiment.*architecture `tensors`",
    ):
        _fit(tmp_path, hidden=(4,))


@pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")
def test_other_weights_at_the_fork_are_refused_at_the_fork(tmp_path):
    _fit(tmp_path, net_seed=0)
    with pytest.raises(ExperimentMismatchError, match=r"the parent's weights at the fork differ"):
        _fit(tmp_path, net_seed=1)


@pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")
def test_other_settings_are_named_in_the_refusal(tmp_path):
    _fit(tmp_path)
    with pytest.raises(
        ExperimentMismatchError,
        match=r"settings `pruning_fn`: 'l1_unstructured' there, 'random_unstructured' now",
    ):
        _fit(tmp_path, pruning_fn="random_unstructured")


@pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")
def test_results_without_a_record_are_refused(tmp_path):
    _fit(tmp_path)
    (tmp_path / "branches" / EXPERIMENT_FILE).unlink()
    with pytest.raises(ExperimentMismatchError, match=r"holds branch results but no experiment.json"):
        _fit(tmp_path)


def _steps_by_tag(run_dir: Path) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents*")):
        accumulator = event_accumulator.EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    return steps


def test_a_demo_rerun_leaves_one_copy_of_every_curve(tmp_path):
    torch.set_num_threads(1)
    settings = experiments.demo_settings(
        log_dir=str(tmp_path),
        epochs_before=1,
        epochs_after=1,
        hidden=(16,),
        amounts=(0.5,),
        progress_bar=False,
        accelerator="cpu",
        extra_trainer_kwargs={"limit_train_batches": 4, "limit_val_batches": 2},
    )
    run_dir = tmp_path / "mlp-prune" / "seed-0"
    experiments.run_experiment("mlp-prune", settings)
    first = _steps_by_tag(run_dir)
    first_control = _steps_by_tag(run_dir / "branches" / "control")
    experiments.run_experiment("mlp-prune", settings)
    second = _steps_by_tag(run_dir)
    assert len(list(run_dir.glob("events.out.tfevents*"))) == 1
    assert second == first  # the same steps, once each
    for tag, steps in second.items():
        # Not Lightning's own `epoch` (logged beside every metrics call) nor its `hp_metric` placeholder.
        if tag not in ("epoch", "hp_metric"):
            assert len(steps) == len(set(steps)), tag
    assert 0 in second["emergence/E"]  # the before-training point survives the rerun
    assert _steps_by_tag(run_dir / "branches" / "control") == first_control
    summary = json.loads((run_dir / "branches" / "summary.json").read_text())
    assert [branch["resumed"] for branch in summary["branches"]] == [True, True]
