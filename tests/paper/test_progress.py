"""Per-run epoch lines: one line per epoch of the parent and of every branch, from a real fit."""

import csv
import io
import re

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tiny_models import Classifier, loaders, mlp

from emergence_lightning import EmergenceCallback, PruneAndBranchCallback
from emergence_lightning.paper.progress import EpochLines

LINE = re.compile(r"^exp/seed-0 (\S+)\s+epoch\s+(\d+)/3  val_acc (\S+)  E (\d+)  \d+ s$")


def test_a_line_per_epoch_for_the_parent_and_each_branch(tmp_path):
    stream = io.StringIO()
    train, val = loaders()
    callbacks = [
        EmergenceCallback(),
        PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False),
        EpochLines("exp/seed-0", stream=stream),
    ]
    trainer = pl.Trainer(
        max_epochs=3, logger=TensorBoardLogger(str(tmp_path), name="", version="seed-0"), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Classifier(mlp()), train, val)
    lines = stream.getvalue().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    seen = [(m.group(1), int(m.group(2))) for m in parsed]
    # The parent trains epoch 1 and forks; each branch trains epochs 2 and 3 in its own copy.
    assert seen == [("parent", 1), ("control", 2), ("control", 3), ("pruned-50", 2), ("pruned-50", 3)]
    with open(tmp_path / "seed-0" / "branches" / "summary.csv", newline="") as handle:
        summary = {row["name"]: row for row in csv.DictReader(handle)}
    for match in (parsed[2], parsed[4]):  # each branch's last line: its final val_acc and E
        row = summary[match.group(1)]
        assert float(match.group(3)) == pytest.approx(float(row["final"]), abs=1e-3)
        assert int(match.group(4)) == int(row["E_end"])


def test_experiments_print_lines_when_the_bar_is_hidden(tmp_path):
    from emergence_lightning.paper import experiments

    for bar in (True, False):
        settings = experiments.Settings(progress_bar=bar, accelerator="cpu")
        trainer = experiments._trainer(settings, tmp_path / "mlp-prune" / "seed-0", 2, [])
        lines = [cb for cb in trainer.callbacks if isinstance(cb, EpochLines)]
        assert [cb.label for cb in lines] == ([] if bar else ["mlp-prune/seed-0"])
