"""The benchmark scripts run end to end (tiny sizes, CPU), so they cannot rot between GPU sessions.

Their timing figures are not checked here (speed is judged from the scripts' printed medians,
never by a timed test); what is checked is what they print about correctness. A dry run compares the
CPU with the CPU, so its MATCH proves nothing: the active nodes and E it prints are checked against
plain forward hooks on the same seeded models and the E oracle instead.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.oracle import emergence_oracle
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_models builds the seeded models gpu_check.py measures
from bench_models import TINY, build, inputs  # noqa: E402
from bench_scale import counts  # noqa: E402

pytestmark = pytest.mark.slow


def run_script(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def n_of(output: str, model: str) -> list[int]:
    match = re.search(rf"compare {model}: \d+ layers; n = \[([\d, ]*)\]", output)
    assert match, output
    return [int(v) for v in match.group(1).split(",")]


def printed(output: str, model: str) -> tuple[list[int], int]:
    """The ``a cpu`` list and ``E cpu`` value gpu_check.py printed for ``model``."""
    block = output[output.index(f"compare {model}:") :]
    a = re.search(r"a cpu  = \[([\d, ]*)\]", block)
    E = re.search(r"E cpu (\d+) vs", block)
    assert a and E, block
    return [int(v) for v in a.group(1).split(",")], int(E.group(1))


def independent_active(model_name: str, theta: float = 0.05) -> list[int]:
    """Active nodes of each ReLU call site of gpu_check's dry-run model, from plain forward hooks.

    Each node's mean output over every sample and position (channels of a conv's output, the last
    dim of a token sequence) against theta: the paper's rule, which the default rule equals on ReLU.
    """
    model = build(model_name, TINY).eval()
    data = inputs(model_name, TINY, 2 * TINY.batch)  # gpu_check measures 2 batches of TINY.batch
    active: list[int] = []

    def count(output: torch.Tensor, node_dim: int) -> None:
        dims = [d for d in range(output.dim()) if d != node_dim % output.dim()]
        active.append(int((output.detach().double().mean(dims) > theta).sum()))

    if model_name == "resnet18":  # every call of a ReLU module is a layer (BasicBlock calls its own twice)
        hooks = [
            m.register_forward_hook(lambda m, i, o: count(o, 1))
            for m in model.modules()
            if isinstance(m, nn.ReLU)
        ]
    else:  # nn.TransformerEncoderLayer applies F.relu to linear1's output
        hooks = [
            layer.linear1.register_forward_hook(lambda m, i, o: count(torch.relu(o), -1))
            for layer in model.encoder.layers
        ]
    with torch.enable_grad():  # grad on: the encoder's fused inference path would skip linear1
        model(data)
    for hook in hooks:
        hook.remove()
    return active


def test_gpu_check_dry_run():
    output = run_script("benchmarks/gpu_check.py", "--dry-run", "--rounds", "1")
    assert output.startswith("dry run on the CPU"), output
    # torchvision's ResNet-18: the stem's ReLU, then two ReLU call sites per BasicBlock (after bn1
    # and after the residual add), two blocks per stage of 64, 128, 256, 512 channels.
    assert n_of(output, "resnet18") == [64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4
    # Two nn.TransformerEncoderLayer(d_model=16, dim_feedforward=64): one functional ReLU each.
    assert n_of(output, "transformer") == [64, 64]
    for model_name in ("resnet18", "transformer"):
        a, E = printed(output, model_name)
        assert a == independent_active(model_name), model_name
        assert E == emergence_oracle(n_of(output, model_name), a), model_name
    # 16 training samples at batch 4 for 2 epochs: 8 steps, no window open in any; epoch 0 + 2 epochs measured.
    assert "sync check (with EmergenceCallback): 8 training steps" in output, output
    assert "steps with a window open: 0; measurements: 3: OK" in output, output
    assert re.search(
        r"overhead convnet: .* median ratio at defaults \d+\.\d{4}, with measure_at_start=False", output
    )
    # Issue 19's Python-bound cases: GPT-2's 12 and Llama's 8 MLP activations, the chain's 300 ReLUs.
    for name, layers in (("gpt2", 12), ("llama", 8), ("chain", 300)):
        assert f"window sync check {name}: 2 passes with the window open" in output, output
        assert f"{layers} layers measured: OK" in output, output
    assert output.rstrip().endswith("RESULT: PASS"), output


def test_per_call_benchmark_prints_each_case_and_leaves_nothing_behind():
    output = run_script(
        "benchmarks/bench_window_per_call.py", "--pairs", "5", "--passes", "1", "--cases", "llama", "chain"
    )
    assert re.search(r"llama\s+mean_abs\s+8 layers, closed vs open: cpu .* ratio \d", output), output
    assert re.search(
        r"chain\s+mean_abs\s+300 layers, .* added per activation call: cpu -?\d+\.\d us", output
    ), output
    assert "global module hooks left 0, modules with hooks left 0, torch function modes left 0" in output, (
        output
    )


def test_window_benchmark_leaves_no_hook_or_mode_behind():
    output = run_script(
        "benchmarks/bench_measure_window.py",
        "--tiny",
        "--models",
        "convnet",
        "--statistics",
        "fraction",
        "--pairs",
        "5",
    )
    assert re.search(
        r"convnet\s+fraction\s+6 layers, window closed vs open: wall .* median ratio \d", output
    ), output
    assert "global module hooks left 0, modules with hooks left 0, torch function modes left 0" in output, (
        output
    )


def test_scale_benchmark_prints_the_exact_E_and_each_target():
    layers = 120
    output = run_script(
        "benchmarks/bench_scale.py", "--layers", str(layers), "--repeats", "1",
        "--epoch-layers", "20", "--rounds", "1", "--epochs", "2",
    )  # fmt: skip
    E = emergence_oracle(*counts(layers))  # the script's seeded counts (its input), the oracle's E
    assert f"E = ...{E % 10**12:012d} (exact), log10(E + 1) = {math.log10(E + 1):,.1f}\n" in output, output
    assert re.search(r"target < 100 ms \(CPU, all three\): \d+\.\d ms, (met|MISSED)", output), output
    assert re.search(r"no logger: +\d+\.\d+ ms / +\d+\.\d+ ms", output), output
    assert re.search(r"TensorBoard \+ CSV: +\d+\.\d+ ms / +\d+\.\d+ ms", output), output
    assert re.search(r"target <= 50 ms \(CPU, no logger\): \d+\.\d ms, (met|MISSED)", output), output
