"""Real multi-process runs: Lightning's DDP on 2 CPU processes (gloo) against 1 process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tb import read_scalars

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_emergence.py"


def run(tmp_path: Path, devices: int, *args: str) -> dict:
    out = tmp_path / f"history-{devices}-{'-'.join(args) or 'default'}.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--devices", str(devices), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("statistic", ["mean", "normalized_mean_abs", "max"])
def test_two_processes_equal_one_on_uneven_validation_set(tmp_path, statistic):
    # 37 validation samples over 2 processes: the sampler pads one sample that must not count twice
    single = run(tmp_path, 1, "--val-samples", "37", "--statistic", statistic)
    double = run(tmp_path, 2, "--val-samples", "37", "--statistic", statistic, "--log-dir", "tb")
    assert double["world_size"] == 2
    assert double["history"] == single["history"]
    assert [r["samples"] for r in double["history"]] == [37, 37, 37]
    assert all(r["E"] > 0 for r in double["history"])
    # rank zero alone writes the logs, each measurement once
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents*"))) == 1
    scalars = read_scalars(tmp_path / "tb")
    assert [value for _, value in sorted(scalars["emergence/epoch"])] == [0, 1, 2]
    assert [value for _, value in sorted(scalars["emergence/E"])] == [
        float(r["E"]) for r in double["history"]
    ]


@pytest.mark.slow
def test_two_processes_equal_one_on_uneven_training_passes(tmp_path):
    # No validation loop: the training passes are measured (and the epoch-0 pass reads the training
    # data). 37 samples over 2 processes: the DistributedSampler repeats one, which must not count.
    single = run(tmp_path, 1, "--train-samples", "37", "--no-validation")
    double = run(tmp_path, 2, "--train-samples", "37", "--no-validation")
    assert double["world_size"] == 2
    assert [r["samples"] for r in double["history"]] == [37, 37, 37]
    assert double["history"] == single["history"]
    assert all(r["E"] > 0 for r in double["history"])


@pytest.mark.slow
def test_stop_at_zero_agrees_across_processes(tmp_path):
    result = run(tmp_path, 2, "--dead", "--epochs", "6")
    assert [r["E"] for r in result["history"]] == [0, 0]  # epoch 0, then stop after epoch 1
    assert result["epochs_run"] == 1
