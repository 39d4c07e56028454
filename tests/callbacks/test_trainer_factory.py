"""Branch Trainers: the one module reading a parent Trainer's privates, a user's `trainer_factory`, the fork record."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tiny_models import Classifier, loaders, mlp, quiet_trainer

from emergence_lightning.branching.plan import BranchSpec
from emergence_lightning.callbacks import trainer_factory
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.callbacks.trainer_factory import (
    PRIVATE_ATTRIBUTES,
    TENSORBOARD_PLACEHOLDER_FLAG,
    check_lightning_attributes,
    skip_placeholder_hp_metric,
)


def _trainer(root: Path, callbacks: list, max_epochs: int = 3) -> pl.Trainer:
    return quiet_trainer(root, callbacks, max_epochs)


def test_every_private_lightning_attribute_read_exists_in_this_version():
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    check_lightning_attributes(trainer)  # raises naming the attribute otherwise


def _private_names_read(source: str) -> set[str]:
    """Private attribute names read in ``source``: ``x._name`` and ``getattr(x, "_name", ...)`` (not on self)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) not in ("self", "cls"):
            names.add(node.attr)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr", "setattr"):
            if (
                len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                names.add(node.args[1].value)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_the_private_list_is_what_the_factory_reads():
    # The expectation comes from the factory's source, not from the list: every private Lightning
    # attribute it reads is listed (else setup would not check it), and every listed one is read.
    read = _private_names_read(Path(trainer_factory.__file__).read_text())
    listed = {part for paths in PRIVATE_ATTRIBUTES.values() for path in paths for part in path.split(".")}
    assert not read - listed, f"read but not in PRIVATE_ATTRIBUTES (so never checked): {read - listed}"
    assert {part for part in listed if part.startswith("_")} <= read, "listed but no longer read"


def test_tensorboard_placeholder_flag_exists_and_is_turned_off(tmp_path):
    # The parent's HParams row and the branch columns need Lightning's placeholder entry off; the
    # flag is private, so this fails loudly, naming it, on a Lightning version that moved it.
    logger = TensorBoardLogger(str(tmp_path))
    assert getattr(logger, TENSORBOARD_PLACEHOLDER_FLAG) is True, TENSORBOARD_PLACEHOLDER_FLAG
    trainer = pl.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False)
    skip_placeholder_hp_metric(trainer)
    assert getattr(logger, TENSORBOARD_PLACEHOLDER_FLAG) is False


class _MovedCounter:
    """Stands in for a Lightning version whose epoch loop has no `_batches_that_stepped`."""


def test_a_moved_attribute_fails_loudly_naming_it(monkeypatch):
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    monkeypatch.setattr(trainer.fit_loop, "epoch_loop", _MovedCounter())
    with pytest.raises(
        RuntimeError,
        match=r"reads `Trainer\.fit_loop\.epoch_loop\._batches_that_stepped`, which Lightning .* \(`_batches_that_stepped` is missing\).*`trainer_factory=`",
    ):
        check_lightning_attributes(trainer)


def test_a_moved_attribute_is_refused_before_the_parent_trains(tmp_path, monkeypatch):
    monkeypatch.delattr(pl.Trainer, "_val_check_time_interval", raising=False)
    trainer = _trainer(tmp_path, [PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)])
    if hasattr(trainer, "_val_check_time_interval"):
        monkeypatch.delattr(trainer, "_val_check_time_interval")
    torch.manual_seed(0)
    model = Classifier(mlp(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"`Trainer\._val_check_time_interval`"):
        trainer.fit(model, *loaders())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step ran


class BatchCounter(pl.Callback):
    """Training batches per run directory (branches get deep copies: a class attribute)."""

    seen: ClassVar[dict[str, int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        key = Path(trainer.log_dir).name if Path(trainer.log_dir).parent.name == "branches" else "parent"
        BatchCounter.seen[key] = BatchCounter.seen.get(key, 0) + 1


def test_a_user_trainer_factory_builds_every_branch(tmp_path):
    built: list[tuple[str, int]] = []
    BatchCounter.seen = {}

    def factory(spec: BranchSpec, kwargs: dict) -> pl.Trainer:
        built.append((spec.name, kwargs["max_epochs"]))
        return pl.Trainer(**{**kwargs, "limit_train_batches": 2})  # two batches per branch epoch

    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False, trainer_factory=factory)
    torch.manual_seed(0)
    _trainer(tmp_path, [BatchCounter(), callback]).fit(Classifier(mlp(), lr=0.1), *loaders())
    assert built == [("control", 3), ("pruned-50", 3)]
    assert [r["status"] for r in callback.results] == ["finished", "finished"]
    # 96 samples / batch 16 = 6 parent batches in its one epoch; the factory's limit: 2 epochs x 2 in each branch.
    assert BatchCounter.seen == {"parent": 6, "control": 4, "pruned-50": 4}


def test_a_factory_that_drops_the_callbacks_fails_the_branch_clearly(tmp_path):
    def factory(spec: BranchSpec, kwargs: dict) -> pl.Trainer:
        return pl.Trainer(**{**kwargs, "callbacks": []})

    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False, trainer_factory=factory)
    with pytest.warns(
        UserWarning,
        match=r"branch 'control' failed: ValueError: `trainer_factory` returned a Trainer without the callbacks",
    ):
        _trainer(tmp_path, [callback]).fit(Classifier(mlp(), lr=0.1), *loaders())
    assert [r["status"] for r in callback.results] == ["failed", "failed"]


def test_bad_trainer_factory_argument():
    with pytest.raises(
        TypeError, match=r"`trainer_factory` must be callable as factory\(spec, kwargs\), got 'pl.Trainer'"
    ):
        PruneAndBranchCallback(trainer_factory="pl.Trainer")


def test_the_fork_measurement_is_flagged_as_trained_not_before_training(tmp_path):
    """The branch's first record is at the fork epoch with `before_training=False`; the parent's first is flagged True."""
    parent = EmergenceCallback()
    callback = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False)
    torch.manual_seed(0)
    _trainer(tmp_path, [parent, callback], max_epochs=3).fit(Classifier(mlp(), lr=0.1), *loaders())
    assert parent.records()[0].before_training and parent.records()[0].epoch == 0
    assert not any(record.before_training for record in parent.records()[1:])
    for result in callback.results:
        history = result["history"]["E"]
        assert history[0][0] == 2  # first branch point: the fork epoch
        assert result["E_fork"] == history[0][1]
