"""Every bad PruneAndBranchCallback argument is refused before any training, naming the argument and the value."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tiny_models import Classifier, loaders, mlp

from emergence_lightning.branching.store import EXPERIMENT_FILE
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback

pytestmark = pytest.mark.filterwarnings("ignore:PruneAndBranchCallback. the Trainer has no logger")


class TrainingBatches(pl.Callback):
    """Counts the parent's training batches: a refusal at `setup` leaves it at 0."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def _fit(tmp_path, callback: PruneAndBranchCallback, counter: TrainingBatches | None = None) -> None:
    torch.manual_seed(0)
    counter = counter or TrainingBatches()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[counter, callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Classifier(mlp(), lr=0.1), *loaders())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, r"`seed` must be in \[0, 2\*\*32 - 1\] .*got -1"),
        ({"seed": 2**70}, ValueError, rf"`seed` must be in \[0, 2\*\*32 - 1\] .*got {2**70}"),
        ({"seed": True}, TypeError, r"`seed` must be an int, got True"),
        (
            {"trainer_kwargs": {"max_epochs": "ten"}},
            TypeError,
            r"`trainer_kwargs\['max_epochs'\]` must be a whole number or None, got 'ten'",
        ),
        (
            {"trainer_kwargs": {"limit_train_batches": "all"}},
            TypeError,
            r"`trainer_kwargs\['limit_train_batches'\]` must be a number or None, got 'all'",
        ),
        (
            {"trainer_kwargs": {"accumulate_grad_batches": 2.5}},
            TypeError,
            r"`trainer_kwargs\['accumulate_grad_batches'\]` must be a whole number, got 2.5",
        ),
        (
            {"amounts": (np.float32(1.5),)},
            ValueError,
            r"`amounts` must hold fractions in \[0, 1\), got np.float32\(1.5\)",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        PruneAndBranchCallback(**kwargs)


def test_a_pruning_dimension_the_weights_lack_fails_at_setup(tmp_path):
    callback = PruneAndBranchCallback(
        branch_epoch=1, pruning_fn="ln_structured", pruning_dim=7, verbose=False
    )
    counter = TrainingBatches()
    with pytest.raises(
        ValueError, match=r"`pruning_dim`=7 does not index `net.0.weight` of shape \(16, 8\): ln_structured"
    ):
        _fit(tmp_path, callback, counter)
    assert counter.batches == 0


def test_trainer_kwargs_the_trainer_refuses_fail_at_setup(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1, trainer_kwargs={"precision": "17-odd"}, verbose=False)
    counter = TrainingBatches()
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with pytest.raises(
        ValueError,
        match=r"`trainer_kwargs`=\{'precision': '17-odd'\} with the parent's settings give no branch Trainer",
    ):
        _fit(tmp_path, callback, counter)
    assert counter.batches == 0
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == flags


def test_building_the_branch_trainer_at_setup_leaves_the_global_flags(tmp_path):
    callback = PruneAndBranchCallback(
        branch_epoch=1, amounts=(0.5,), trainer_kwargs={"deterministic": True}, verbose=False
    )
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)

    class Flags(pl.Callback):
        seen = None

        def on_train_start(self, trainer, pl_module):
            if Flags.seen is None:  # the parent's, not the branches' (which are deterministic)
                Flags.seen = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)

    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[Flags(), callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    try:
        trainer.fit(Classifier(mlp(), lr=0.1), *loaders())
    finally:
        torch.use_deterministic_algorithms(flags[0])
    assert Flags.seen == flags


def test_numpy_scalars_are_taken_as_numbers(tmp_path):
    callback = PruneAndBranchCallback(
        branch_epoch=np.int64(1),
        amounts=(np.float32(0.5),),
        seed=np.int64(3),
        pruning_fn="ln_structured",
        pruning_dim=np.int64(0),
        pruning_norm=np.float64(2.0),
        trainer_kwargs={"max_epochs": np.int64(2), "limit_train_batches": np.float32(0.5)},
        verbose=False,
    )
    _fit(tmp_path, callback)
    assert [(r["name"], r["status"]) for r in callback.results] == [
        ("control", "finished"),
        ("pruned-50", "finished"),
    ]
    settings = json.loads((tmp_path / "branches" / EXPERIMENT_FILE).read_text())["settings"]
    assert settings["seed"] == 3 and settings["pruning_dim"] == 0 and settings["pruning_norm"] == 2
    assert settings["trainer"]["max_epochs"] == 2 and settings["trainer"]["limit_train_batches"] == 0.5
    assert callback.branch_epoch == 1 and type(callback.branch_epoch) is int


@pytest.mark.parametrize("strategy", ["ModelParallelStrategy", "FSDPStrategy"])
def test_sharded_strategies_are_refused_saying_why(strategy):
    from lightning.pytorch import strategies

    from emergence_lightning.callbacks.trainer_factory import check_strategy

    with pytest.raises(
        ValueError, match=rf"does not run branches under a sharded strategy, got {strategy}: "
    ):
        check_strategy(getattr(strategies, strategy)())
