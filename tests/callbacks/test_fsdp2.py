"""FSDP2 through Lightning's ModelParallelStrategy: 2 CPU processes (gloo) measure as one eager process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed.fsdp

SCRIPT = Path(__file__).parents[1] / "scripts" / "fsdp2_emergence.py"
pytestmark = pytest.mark.skipif(
    not hasattr(torch.distributed.fsdp, "fully_shard"),
    reason="needs torch.distributed.fsdp.fully_shard (FSDP2)",
)


def run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"history-{'-'.join(args)}.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fsdp2_on_two_processes_equals_one_eager_process(tmp_path):
    eager = run(tmp_path, "--devices", "1")
    sharded = run(tmp_path, "--devices", "2", "--fsdp2")
    assert sharded["world_size"] == 2
    # The conv weight really is sharded: a DTensor holding half of the 6 x 1 x 3 x 3 filters here.
    assert sharded["weight_type"] == "DTensor" and sharded["weight_local_numel"] == 27
    assert eager["weight_type"] == "Parameter" and eager["weight_local_numel"] == 54
    # Layers (the ReLU inside the fully_sharded conv block and the Tanh), nodes, active nodes, E,
    # E~ and samples: exactly one process's, with the same names as eager.
    assert sharded["history"] == eager["history"]
    first = eager["history"][0]
    assert first["layers"] == ["net.0.1", "net.3"] and first["n"] == [6, 12] and first["E"] > 0
    assert [record["samples"] for record in eager["history"]] == [37 * 8 * 8] * 3  # 37 images x 64 pixels
    # count_parameters on DTensors with a pruning mask: the global sizes from the architecture,
    # less the 9 weights of the one pruned filter.
    expected = (6 * 9 + 6 - 9) + (6 * 8 * 8 * 12 + 12) + (12 * 3 + 3)
    assert sharded["parameter_counts"] == eager["parameter_counts"] == [expected, expected]
    assert first["relative"] == first["E"] / expected
