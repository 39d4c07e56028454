"""Branches in parallel: each resumable by name from the saved fork, in other processes, then merged.

The branches a job trains from ``fork.pt`` must be exactly those one process would have trained:
the fork carries the weights, optimizer, scheduler, RNG and data order.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tiny_models import Classifier, loaders, mlp

from emergence_lightning.branching.store import FORK_FILE
from emergence_lightning.callbacks import run_saved_branches, saved_plan
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.paper.cli import main as cli
from emergence_lightning.paper.report import find_runs

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "parallel_branches.py"


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "branches" / name / "final_state_dict.pt")


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _fit(root: Path, **kwargs) -> PruneAndBranchCallback:
    """SGD with momentum (the state a fork must carry), 1 epoch before the fork and 2 after."""
    torch.manual_seed(0)
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.3, 0.5), verbose=False, **kwargs)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name="", version=""),
        callbacks=[EmergenceCallback(), callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    train, val = loaders()
    train = torch.utils.data.DataLoader(train.dataset, batch_size=16, shuffle=True)  # data order matters
    trainer.fit(Classifier(mlp(), lr=0.1), train, val)
    return callback


def _scalar_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing import event_accumulator

    steps = []
    for path in sorted(run_dir.glob("events.out.tfevents*")):
        accumulator = event_accumulator.EventAccumulator(str(path))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            steps += [event.step for event in accumulator.Scalars(tag)]
    return steps


def test_branches_by_name_from_the_saved_fork_equal_one_process(tmp_path):
    serial = _fit(tmp_path / "serial")
    _fit(tmp_path / "split", only=[])  # the parent and the saved fork, no branch
    split = tmp_path / "split"
    assert (split / "branches" / FORK_FILE).is_file()
    assert saved_plan(split) == [("control", "not run"), ("pruned-30", "not run"), ("pruned-50", "not run")]
    first = run_saved_branches(split, ["pruned-50"], verbose=False)
    second = run_saved_branches(split / "branches", ["control", "pruned-30"], verbose=False)
    assert [r["name"] for r in first + second] == ["pruned-50", "control", "pruned-30"]
    for name in ("control", "pruned-30", "pruned-50"):
        assert _equal(_weights(split, name), _weights(tmp_path / "serial", name)), name
    by_name = {r["name"]: r for r in serial.results}
    for result in first + second:
        expected = by_name[result["name"]]
        for key in ("E_fork", "E_end", "final", "parameters", "fork_fingerprint", "epochs"):
            assert result[key] == expected[key], (result["name"], key)
    with open(split / "branches" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["control", "pruned-30", "pruned-50"]  # merged, in plan order
    assert {row["status"] for row in rows} == {"finished"}


def test_only_with_a_saved_fork_starts_from_it_without_retraining_the_parent(tmp_path):
    serial = _fit(tmp_path / "serial")
    _fit(tmp_path / "split", only=["control"])  # parent + control; the fork is saved
    parent_steps = _scalar_steps(tmp_path / "split", "emergence/E")
    job = _fit(tmp_path / "split", only=["pruned-50"])  # a second job: the parent does not train again
    assert [r["name"] for r in job.results] == ["pruned-50"]
    assert _equal(_weights(tmp_path / "split", "pruned-50"), _weights(tmp_path / "serial", "pruned-50"))
    assert job.fork == serial.fork  # the same fork point (epoch, step, weights' fingerprint)
    assert _scalar_steps(tmp_path / "split", "emergence/E") == parent_steps  # no second parent curve
    assert saved_plan(tmp_path / "split") == [
        ("control", "finished"),
        ("pruned-30", "not run"),
        ("pruned-50", "finished"),
    ]


def test_unknown_branch_names_are_refused(tmp_path, capsys):
    with pytest.raises(
        ValueError,
        match=r"`only` names \['pruned-40'\], which are no branches of this plan; the branches are \['control', 'pruned-30', 'pruned-50'\]",
    ):
        PruneAndBranchCallback(amounts=(0.3, 0.5), only=["pruned-40"])
    with pytest.raises(TypeError, match=r"`only` must be None or a sequence of branch names, got 'control'"):
        PruneAndBranchCallback(only="control")
    _fit(tmp_path, only=[])
    assert cli(["branch", str(tmp_path), "--name", "pruned-40"]) == 2
    assert "`names` holds ['pruned-40'], which are no branches of" in capsys.readouterr().err
    assert cli(["branch", str(tmp_path / "nowhere"), "--name", "control"]) == 2
    assert f"{tmp_path / 'nowhere' / FORK_FILE} does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_the_example_runs_two_branches_as_two_processes_and_merges_them(tmp_path):
    """examples/parallel_branches.py: parent, then `emergence-lightning branch` x 2 at once, then list and report."""
    common = ["--epochs-before", "1", "--epochs-after", "1", "--limit-batches", "3", "--amounts", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--log-dir", str(tmp_path / "parallel"), *common],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\bcontrol  finished\n +pruned-50  finished\n", done.stdout), done.stdout[
        -2000:
    ]  # `branch --list`
    # The same experiment with both branches in this process (one thread, as the jobs), to compare.
    spec = importlib.util.spec_from_file_location("parallel_branches", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = argparse.Namespace(
        log_dir=str(tmp_path / "serial"), epochs_before=1, epochs_after=1, limit_batches=3, amounts=[0.5],
        lr=0.05, batch_size=64, seed=0,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        example.train_parent(args, only=None)
    finally:
        torch.set_num_threads(threads)
    parallel, serial = tmp_path / "parallel", tmp_path / "serial"
    for name in ("control", "pruned-50"):
        assert _equal(_weights(parallel, name), _weights(serial, name)), name
    with open(parallel / "branches" / "summary.csv") as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == ["control", "pruned-50"]
    # One parent run (one events file: the parent trained once) and the two branch runs, in the report.
    assert set(find_runs(parallel)) == {"parallel", "branches/control", "branches/pruned-50"}
    assert len(list(parallel.glob("events.out.tfevents*"))) == 1
    with open(parallel / "report" / "summary.csv") as handle:
        runs = [row["run"] for row in csv.DictReader(handle)]
    assert len(runs) == 3 and {"control", "pruned-50"} <= {run.rsplit("/", 1)[-1] for run in runs}, runs
