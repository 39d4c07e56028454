"""Safe branch files: one job per branch, checksummed results, unreadable files named, unwritable branches failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tiny_models import Classifier, loaders, mlp

from emergence_lightning.branching import store
from emergence_lightning.branching.lock import LOCK_FILE, BranchLockedError, acquire_lock, release_lock
from emergence_lightning.callbacks import run_saved_branches, saved_plan
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.paper.cli import main as cli


def _fit(root: Path, **kwargs) -> tuple[PruneAndBranchCallback, Classifier]:
    torch.manual_seed(0)
    model = Classifier(mlp(), lr=0.1)
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False, **kwargs)
    trainer = pl.Trainer(
        max_epochs=2,
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
    trainer.fit(model, *loaders())
    return callback, model


def _ended_pid() -> int:
    """The pid of a process of this host that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---- one job per branch ------------------------------------------------------------------------
def test_a_second_job_on_a_branch_is_refused_naming_the_holder_and_touches_nothing(tmp_path, capsys):
    _fit(tmp_path, only=[])  # the parent and its saved fork
    run_dir = tmp_path / "branches" / "pruned-50"
    run_dir.mkdir()
    live = run_dir / "events.out.tfevents.live"  # the other job's event file
    live.write_bytes(b"written by the job that holds the branch")
    holder = {"pid": os.getppid(), "host": os.uname().nodename, "started": "2026-01-01T00:00:00+00:00"}
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(
        BranchLockedError, match=rf"pruned-50 is being trained by another job \(pid {os.getppid()} on "
    ):
        run_saved_branches(tmp_path, ["pruned-50"], verbose=False)
    assert live.read_bytes() == b"written by the job that holds the branch"
    assert cli(["branch", str(tmp_path), "--name", "pruned-50"]) == 2
    assert "pruned-50 is being trained by another job" in capsys.readouterr().err
    assert ("pruned-50", "running (locked)") in saved_plan(tmp_path)
    assert live.exists() and (run_dir / LOCK_FILE).exists()


def test_a_lock_whose_job_ended_is_taken_over(tmp_path):
    run_dir = tmp_path / "control"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": _ended_pid(), "host": os.uname().nodename}))
    lock = acquire_lock(run_dir)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(
        BranchLockedError, match=rf"control is being trained by another job \(pid {os.getpid()}"
    ):
        acquire_lock(run_dir)  # held by a live process: this one
    release_lock(lock)
    assert not lock.exists()


# ---- checksums ------------------------------------------------------------------------------
def test_a_truncated_weights_file_is_caught_and_the_branch_trained_again(tmp_path):
    first, _ = _fit(tmp_path)
    control = {r["name"]: r for r in first.results}["control"]
    weights = Path(control["state_dict"])
    assert control["state_dict_sha256"] == store.sha256(weights)
    original = torch.load(weights)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert ("control", f"corrupt ({store.STATE_DICT_FILE} fails its checksum; reruns)") in saved_plan(
        tmp_path
    )
    with pytest.warns(UserWarning, match=rf"{weights} does not match the checksum its result recorded"):
        second, _ = _fit(tmp_path)
    assert [(r["name"], r["resumed"]) for r in second.results] == [("control", False), ("pruned-50", True)]
    again = torch.load(weights)  # trained again, to the same weights
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)
    assert all(status == "finished" for _, status in saved_plan(tmp_path))


def test_an_unreadable_result_is_named_and_its_branch_trained_again(tmp_path):
    _fit(tmp_path)
    result = tmp_path / "branches" / "pruned-50" / store.RESULT_FILE
    result.write_text('{"name": "pruned-50", "status": "fini')
    with pytest.warns(UserWarning, match=rf"{result} cannot be read"):
        callback, _ = _fit(tmp_path)
    assert [(r["name"], r["resumed"]) for r in callback.results] == [("control", True), ("pruned-50", False)]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_fork_is_an_error_naming_the_file(tmp_path, capsys, damage):
    _fit(tmp_path, only=[])
    fork = tmp_path / "branches" / store.FORK_FILE
    data = fork.read_bytes()
    fork.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a fork at all" * 10)
    with pytest.raises(store.CorruptFileError, match=rf"{fork} cannot be read"):
        run_saved_branches(tmp_path, ["control"], verbose=False)
    assert cli(["branch", str(tmp_path), "--list"]) == 2
    assert f"{fork} cannot be read" in capsys.readouterr().err


# ---- writes that fail ---------------------------------------------------------------------
def test_a_branch_that_cannot_write_fails_and_the_others_run(tmp_path):
    # The control's weights file cannot be written: a folder stands where it goes.
    blocked = tmp_path / "branches" / "control" / store.STATE_DICT_FILE
    (blocked / "in-the-way").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"branch 'control' failed: its files cannot be written"):
        callback, _ = _fit(tmp_path)
    results = {r["name"]: r for r in callback.results}
    assert results["control"]["status"] == "failed" and "IsADirectoryError" in results["control"]["error"]
    assert results["pruned-50"]["status"] == "finished"
    assert torch.load(results["pruned-50"]["state_dict"])  # the other branch's files are whole


def test_a_fork_that_cannot_be_saved_is_named_and_nothing_is_lost(tmp_path):
    fork = tmp_path / "branches" / store.FORK_FILE
    (fork / "in-the-way").mkdir(parents=True)
    with pytest.warns(UserWarning, match=rf"the fork could not be saved to {fork} \(IsADirectoryError"):
        callback, model = _fit(tmp_path)
    assert [r["status"] for r in callback.results] == ["finished", "finished"]  # the branches ran in-process
    assert store.fingerprint(model.state_dict()) == callback.fork.fingerprint  # the parent's module kept


def test_a_branch_result_is_one_typed_record_that_reads_like_the_dict_it_replaced(tmp_path):
    from emergence_lightning.branching import BranchResult
    from emergence_lightning.branching.result import FIELDS
    from emergence_lightning.branching.table import SUMMARY_COLUMNS

    assert set(SUMMARY_COLUMNS) <= FIELDS  # every summary column is a field, named once
    callback, _ = _fit(tmp_path)
    control = callback.results[0]
    assert isinstance(control, BranchResult)
    assert control.name == control["name"] == control.get("name") == "control"
    assert control.get("no such field", "default") == "default"
    with pytest.raises(KeyError, match=r"no_such_field"):
        control["no_such_field"]
    with pytest.raises(KeyError, match=r"BranchResult has no field \['E_ned'\]"):
        control.update(E_ned=1)
    on_disk = json.loads((tmp_path / "branches" / "control" / store.RESULT_FILE).read_text())
    assert BranchResult.from_dict(on_disk) == control
