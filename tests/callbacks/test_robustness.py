"""Robustness: mixed precision, devices, torch.compile, killed processes, exceptions (docs/robustness.md).

Every case is a real Trainer fit of a tiny model; the kill scenarios run real processes and SIGKILL them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tiny_models import Classifier, loaders, mlp
from torch import nn
from torch.nn.utils import prune

from emergence_lightning import ActivityTracker, EmergenceCallback, PruneAndBranchCallback, count_parameters
from emergence_lightning.measure import Measurement, measure_activity
from emergence_lightning.measure.compile_guard import EagerWhileMeasuring, compiled_modules

SCRIPTS = Path(__file__).parents[1] / "scripts"
THRESHOLD = 0.05
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def trainer(tmp_path: Path, callbacks: list, max_epochs: int = 1, **kwargs) -> pl.Trainer:
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("logger", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(
        max_epochs=max_epochs,
        devices=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def forward_hooks(model: nn.Module) -> list[str]:
    """Modules that carry a forward hook or a forward pre-hook other than a pruning mask's."""
    return [
        name
        for name, module in model.named_modules()
        if module._forward_hooks
        or any(not isinstance(hook, prune.BasePruningMethod) for hook in module._forward_pre_hooks.values())
    ]


# ---- 1. precision and devices ---------------------------------------------------------------------
def agree_within_threshold_tolerance(reference: Measurement, other: Measurement, rtol: float) -> int:
    """Asserts ``other`` reads the nodes as ``reference`` does, up to a relative error ``rtol``.

    Per node: ``|other - reference| <= rtol * max(|reference|, THRESHOLD)``, and the node's state
    (active or dead) is the same unless its reference activity lies within that tolerance of the
    threshold, where a rounding error may flip it. Returns how many such borderline nodes there were.
    """
    assert other.names == reference.names and other.n == reference.n
    assert other.samples == reference.samples
    borderline = 0
    for ref, got in zip(reference.layers, other.layers):
        tolerance = rtol * ref.activity.abs().clamp_min(THRESHOLD)
        error = (got.activity - ref.activity).abs()
        worst = float((error / tolerance).max())
        assert worst <= 1, f"{ref.name}: largest error {worst:.2f} x the tolerance"
        clear = (ref.activity - THRESHOLD).abs() > tolerance
        assert torch.equal(got.active[clear], ref.active[clear]), ref.name
        borderline += int((~clear).sum())
    return borderline


def fixed_weights_fit(
    tmp_path: Path, net: nn.Module, precision: str = "32-true", accelerator: str = "cpu"
) -> tuple[EmergenceCallback, Measurement, set[torch.dtype]]:
    """Fits a copy of ``net`` with lr = 0 (epoch 0 and epoch 1 see the same weights); returns the
    callback, the last window's per-node measurement and the dtypes the first tracked layer produced.
    """
    model = Classifier(copy.deepcopy(net), lr=0.0)
    dtypes: set[torch.dtype] = set()
    handle = model.net[1].register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    callback = EmergenceCallback(threshold=THRESHOLD)
    try:
        trainer(tmp_path, [callback], precision=precision, accelerator=accelerator).fit(model, *loaders())
    finally:
        handle.remove()
    return callback, callback.tracker.compute(), dtypes


def test_running_sums_stay_exact_under_bf16_autocast():
    # 300 batches of a bf16 output of 1.0: a bf16 running sum would stall at 256 (8-bit mantissa)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    x = torch.ones(1, 2)
    with ActivityTracker(model) as tracker, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        for _ in range(299):
            model(x)
    assert tracker._stats["1"].total.dtype == torch.float64  # the accumulator, whatever the output dtype
    result = tracker.compute()
    assert result.samples == 300
    assert result.layers[0].activity.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("precision", "accelerator"),
    [
        ("bf16-mixed", "cpu"),
        pytest.param("bf16-mixed", "cuda", marks=CUDA),
        pytest.param("16-mixed", "cuda", marks=CUDA),
    ],
)
def test_mixed_precision_reads_the_same_nodes_as_float32(tmp_path, precision, accelerator):
    torch.manual_seed(1)
    net = mlp(hidden=(32, 24, 16))  # E = 592 on this data, no node within tolerance of the threshold
    reference, ref_nodes, ref_dtypes = fixed_weights_fit(tmp_path / "fp32", net)
    mixed, mixed_nodes, mixed_dtypes = fixed_weights_fit(tmp_path / "mixed", net, precision, accelerator)
    assert ref_dtypes == {torch.float32}
    assert mixed_dtypes == {torch.bfloat16 if precision.startswith("bf16") else torch.float16}
    assert all(stat.total.dtype == torch.float64 for stat in mixed.tracker._stats.values())
    # bf16 keeps 8 bits of mantissa (relative rounding 2**-8 per operation); 2 % covers 3 layers of it
    borderline = agree_within_threshold_tolerance(ref_nodes, mixed_nodes, rtol=2e-2)
    assert borderline == 0
    # ... so every count, E and E~ are exactly those of float32, at every measurement
    keys = ("epoch", "layers", "n", "a", "E", "relative", "samples")
    same = [[{k: r[k] for k in keys} for r in run.history] for run in (mixed, reference)]
    assert same[0] == same[1]
    assert [r["E"] for r in mixed.history] == [592, 592]


@pytest.mark.parametrize("accelerator", [pytest.param("cuda", marks=CUDA)])
def test_gpu_measures_as_cpu(tmp_path, accelerator):
    torch.manual_seed(1)
    net = mlp(hidden=(32, 24, 16))
    cpu, cpu_nodes, _ = fixed_weights_fit(tmp_path / "cpu", net)
    gpu, gpu_nodes, _ = fixed_weights_fit(tmp_path / "gpu", net, accelerator=accelerator)
    assert next(iter(gpu.tracker._stats.values())).total.device.type == accelerator
    assert agree_within_threshold_tolerance(cpu_nodes, gpu_nodes, rtol=1e-4) == 0
    assert [r["E"] for r in gpu.history] == [r["E"] for r in cpu.history]
    assert [r["a"] for r in gpu.history] == [r["a"] for r in cpu.history]


# ---- 2. torch.compile -----------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches are per code object and process-wide: after 8 compilations of one `forward`
    it silently runs eagerly, so every compiling test starts (and leaves) them empty.
    """
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    assert len(EagerWhileMeasuring.holders) == 0 and EagerWhileMeasuring.stance is None  # all given back


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is and counts the runs: proof that
    compiled code ran (with the same arithmetic as eager, so E must match exactly).
    """

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args):
            self.runs += 1
            return graph.forward(*args)

        return run


def dead_nodes_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = mlp(hidden=(16, 12))
    with torch.no_grad():
        net[0].bias[:5] = -3.0  # some dead nodes, so E > 0
    return net


def compile_model(model: Classifier, how: str, backend: object) -> pl.LightningModule | nn.Module:
    if how == "fit(torch.compile(model))":
        return torch.compile(model, backend=backend)  # Lightning puts compiled forward/*_step on the model
    if how == "model.compile()":
        model.compile(backend=backend)
    elif how == "model.net = torch.compile(model.net)":
        model.net = torch.compile(model.net, backend=backend)
    elif how == "model.net.compile()":
        model.net.compile(backend=backend)
    return model


def emergence_history(tmp_path: Path, model: nn.Module, validation: bool = True, **kwargs) -> list[dict]:
    callback = EmergenceCallback()
    train, val = loaders()
    kwargs.setdefault("num_sanity_val_steps", 2)  # Lightning's default: compiles validation before any hook
    trainer(tmp_path, [callback], max_epochs=2, **kwargs).fit(model, train, val if validation else None)
    return [{k: r[k] for k in ("epoch", "n", "a", "E", "samples")} for r in callback.history]


HOW = [
    "model.compile()",
    "model.net = torch.compile(model.net)",
    "model.net.compile()",
    "fit(torch.compile(model))",
]


@pytest.mark.parametrize("how", HOW)
def test_compiled_model_measures_as_uncompiled(tmp_path, how, fresh_dynamo):
    # Dynamo does not guard compiled code on submodules' hooks: without the eager stance the
    # callback saw the last, odd-sized validation batch only (8 of 40 samples) or nothing at all.
    expected = emergence_history(tmp_path / "eager", Classifier(dead_nodes_net(), lr=0.1))
    backend = CountingBackend()
    model = compile_model(Classifier(dead_nodes_net(), lr=0.1), how, backend)
    assert emergence_history(tmp_path / "compiled", model) == expected
    assert [r["samples"] for r in expected] == [40, 40, 40] and expected[0]["E"] > 0
    assert backend.runs >= 12  # the training steps (6 per epoch) ran compiled code


BACKEND = CountingBackend()


class DecoratedForward(Classifier):
    """`@torch.compile` on the method in the class body: nothing on the instance shows it."""

    @torch.compile(backend=BACKEND)
    def forward(self, x):
        return self.net(x)


def run_net(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)


class CompiledHelper(Classifier):
    """`forward` calls a compiled function that runs the submodules: no module is compiled."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = CountingBackend()
        self.run = torch.compile(run_net, backend=self.backend)

    def forward(self, x):
        return self.run(self.net, x)


@pytest.mark.parametrize("model_class", [DecoratedForward, CompiledHelper])
def test_compiled_code_no_module_shows_is_measured_as_uncompiled(tmp_path, model_class, fresh_dynamo):
    expected = emergence_history(tmp_path / "eager", Classifier(dead_nodes_net(), lr=0.1))
    model = model_class(dead_nodes_net(), lr=0.1)
    backend = getattr(model, "backend", BACKEND)
    runs = backend.runs
    assert emergence_history(tmp_path / "compiled", model) == expected
    assert backend.runs >= runs + 12  # the training steps ran compiled code


def test_a_copy_of_an_attached_tracker_cannot_release_the_eager_stance(fresh_dynamo):
    net = dead_nodes_net()
    backend = CountingBackend()
    net.compile(backend=backend)
    tracker = ActivityTracker(net).attach()
    copy.deepcopy(tracker).detach()  # e.g. a callback deep-copied while measuring
    with torch.no_grad():
        net(torch.randn(5, 8))
    assert backend.runs == 0  # still eager: the original's hold stands
    tracker.detach()
    assert tracker.compute().samples == 5
    net(torch.randn(5, 8))
    assert backend.runs == 1


def test_compiled_model_without_validation_measures_training_passes(tmp_path, fresh_dynamo):
    # The training epochs are the measurement windows: they run eagerly, and E is the uncompiled one.
    expected = emergence_history(tmp_path / "eager", Classifier(dead_nodes_net(), lr=0.1), validation=False)
    model = compile_model(Classifier(dead_nodes_net(), lr=0.1), "model.net.compile()", CountingBackend())
    assert emergence_history(tmp_path / "compiled", model, validation=False) == expected
    assert [r["samples"] for r in expected] == [96, 96, 96]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler")
def test_compiled_with_the_default_inductor_backend(tmp_path, fresh_dynamo):
    # The default backend fuses kernels: E is compared on fixed weights, away from any borderline node.
    expected = emergence_history(tmp_path / "eager", Classifier(dead_nodes_net(), lr=0.0))
    model = Classifier(dead_nodes_net(), lr=0.0)
    model.net.compile()
    assert emergence_history(tmp_path / "inductor", model) == expected


def test_compiled_code_runs_again_after_the_window_even_when_fit_raises(tmp_path, fresh_dynamo):
    backend = CountingBackend()

    class Exploding(Classifier):
        def validation_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom while measuring a compiled model")
            return super().validation_step(batch, batch_idx)

    model = Exploding(dead_nodes_net(), lr=0.1)
    model.net.compile(backend=backend)
    with pytest.raises(RuntimeError, match="boom while measuring a compiled model"):
        trainer(tmp_path, [EmergenceCallback()]).fit(model, *loaders())
    assert forward_hooks(model) == []
    runs = backend.runs
    model.net(torch.randn(4, 8))
    assert backend.runs == runs + 1  # the eager stance was released: compiled code runs


def test_overlapping_trackers_on_a_compiled_module(fresh_dynamo):
    net = dead_nodes_net()
    expected = measure_activity(
        copy.deepcopy(net), [torch.randn(5, 8, generator=torch.Generator().manual_seed(0))]
    )
    backend = CountingBackend()
    net.compile(backend=backend)
    first, second = ActivityTracker(net).attach(), ActivityTracker(net).attach()
    first.detach()  # out of order: the second is still attached and must still see every batch
    with torch.no_grad():
        net(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)))
    second.detach()
    assert second.compute().a == expected.a and second.compute().samples == 5
    assert backend.runs == 0
    net(torch.randn(5, 8))
    assert backend.runs == 1


def test_compiled_module_on_torch_without_set_stance_fails_clearly(monkeypatch, fresh_dynamo):
    net = mlp()
    net.compile(backend=CountingBackend())
    monkeypatch.delattr(torch.compiler, "set_stance")
    tracker = ActivityTracker(net)
    with pytest.raises(RuntimeError, match=r"Modules \[''\] are compiled with torch.compile.*torch >= 2.6"):
        tracker.attach()
    assert forward_hooks(net) == [] and not tracker.attached


def test_compiled_modules_names_every_form(fresh_dynamo):
    model = Classifier(mlp())
    assert compiled_modules(model) == []
    model.net.compile(backend="eager")
    assert compiled_modules(model) == ["net"]
    model = Classifier(mlp())
    model.forward = torch.compile(model.forward, backend="eager")
    assert compiled_modules(model) == [""]
    assert compiled_modules(DecoratedForward(mlp())) == [""]


def test_activations_called_bypassing_module_hooks_are_still_measured(tmp_path):
    class Bypassing(Classifier):
        def forward(self, x):  # calls the activations' `forward` directly: no module hook sees them
            h = self.net[1].forward(self.net[0](x))
            return self.net[4](self.net[3].forward(self.net[2](h)))

    callback = EmergenceCallback()
    trainer(tmp_path, [callback], max_epochs=1).fit(Bypassing(mlp()), loaders()[0])
    # The ReLU functions are intercepted where they run: functional call sites of the model.
    assert callback.history[-1]["layers"] == ["relu-fn", "relu-fn-call2"]
    assert callback.history[-1]["n"] == [16, 12]


def test_batches_skipped_by_returning_minus_one_are_not_counted(tmp_path):
    # Lightning's documented way to end an epoch early: `on_train_batch_start` returns -1.
    class EndsEpochsEarly(Classifier):
        def on_train_batch_start(self, batch, batch_idx):
            if self.current_epoch == 2:
                return -1  # no batch at all in the third epoch: no measurement, and no error
            return -1 if batch_idx == 2 else None  # two batches of 16 in the others

    callback = EmergenceCallback()
    trainer(tmp_path, [callback], max_epochs=3).fit(EndsEpochsEarly(mlp()), loaders()[0])
    assert [(r["epoch"], r["samples"]) for r in callback.history] == [(0, 96), (1, 32), (2, 32)]


# ---- 3. a fit killed and resumed ------------------------------------------------------------------
def run_script(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PL_DISABLE_FORK": "1"},
    )


def test_fit_killed_after_epoch_two_resumes_with_every_epoch_once(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    try:
        from killed_fit import fit as uninterrupted_fit
    finally:
        sys.path.remove(str(SCRIPTS))
    root = tmp_path / "killed"
    killed = run_script("killed_fit.py", "--root", str(root), "--max-epochs", "4", "--kill-at-epoch", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (root / "killed-at-epoch").read_text() == "2" and not (root / "history.json").exists()
    at_kill = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)
    state_key = next(key for key in at_kill["callbacks"] if key.startswith("EmergenceCallback"))
    assert [r["epoch"] for r in at_kill["callbacks"][state_key]["history"]] == [0, 1, 2]

    resumed = run_script("killed_fit.py", "--root", str(root), "--max-epochs", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((root / "history.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2, 3, 4]  # no gap, no repeat
    assert history[:3] == at_kill["callbacks"][state_key]["history"]
    final = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["callbacks"][state_key]["history"] == history

    # Both processes logged to one run directory: every measurement is there exactly once
    scalars = read_scalars(root / "run" / "version_0")
    assert len(list((root / "run" / "version_0").glob("events.out.tfevents*"))) == 2
    assert [value for _, value in sorted(scalars["emergence/epoch"])] == [0, 1, 2, 3, 4]
    assert [value for _, value in sorted(scalars["emergence/E"])] == [float(r["E"]) for r in history]

    # ... and the measurements are those of a run that was never killed
    reference = uninterrupted_fit(tmp_path / "reference", max_epochs=4)
    assert history == [record.to_dict() for record in reference.history]
    assert any(r["E"] > 0 for r in history)


# ---- 4. a branch run killed and rerun -------------------------------------------------------------
def test_branch_run_killed_mid_branch_reruns_only_the_missing_branches(tmp_path):
    killed = run_script("killed_branches.py", "--root", str(tmp_path), "--kill-in", "pruned-30")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    branches = tmp_path / "runs" / "branches"
    assert (tmp_path / "fits.txt").read_text().split() == ["runs", "control", "pruned-30"]
    summary = json.loads((branches / "summary.json").read_text())
    assert [(b["name"], b["status"]) for b in summary["branches"]] == [("control", "finished")]
    control_result = (branches / "control" / "result.json").read_text()
    control_events = sorted((branches / "control").glob("events.out.tfevents*"))
    assert not (branches / "pruned-30" / "result.json").exists()
    assert list((branches / "pruned-30").glob("events.out.tfevents*"))  # what the killed branch left

    (tmp_path / "fits.txt").unlink()
    rerun = run_script("killed_branches.py", "--root", str(tmp_path))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "forked from different weights" not in rerun.stderr
    # the parent trains again to reach the fork; of the branches only the unfinished ones train
    assert (tmp_path / "fits.txt").read_text().split() == ["runs", "pruned-30", "pruned-50"]
    summary = json.loads((branches / "summary.json").read_text())
    rows = [(b["name"], b["status"], b["resumed"]) for b in summary["branches"]]
    assert rows == [
        ("control", "finished", True),
        ("pruned-30", "finished", False),
        ("pruned-50", "finished", False),
    ]
    assert json.loads((tmp_path / "results.json").read_text()) == [
        {k: b[k] for k in ("name", "status", "resumed", "E_end")} for b in summary["branches"]
    ]
    assert summary["fork_fingerprint"] == json.loads(control_result)["fork_fingerprint"]
    # the finished branch is untouched; the killed one's stale events were replaced by the rerun's
    assert (branches / "control" / "result.json").read_text() == control_result
    assert sorted((branches / "control").glob("events.out.tfevents*")) == control_events
    assert len(list((branches / "pruned-30").glob("events.out.tfevents*"))) == 1
    for name in ("pruned-30", "pruned-50"):
        assert (branches / name / "final_state_dict.pt").is_file()
        epochs = [value for _, value in sorted(read_scalars(branches / name)["emergence/epoch"])]
        assert epochs == [1, 2, 3]  # the fork, then each branch epoch, once


# ---- 5. hooks and modes after an exception --------------------------------------------------------
def frozen_parts_model(model_class: type[Classifier] = Classifier) -> Classifier:
    """A model with a BatchNorm and a Dropout the user put in eval mode before fit."""
    net = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3),
    )  # fmt: skip
    model = model_class(net, lr=0.1)
    model.net[1].eval()
    model.net[3].eval()
    return model


class RaiseInValidation(Classifier):
    def validation_step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:  # mid-epoch, one batch already measured
            raise RuntimeError("boom in validation")
        return super().validation_step(batch, batch_idx)


def test_validation_step_raising_mid_epoch_leaves_no_hook_and_the_modes_lightning_leaves(tmp_path):
    outcomes = {}
    for name, callbacks in (("with", [EmergenceCallback()]), ("without", [])):
        model = frozen_parts_model(RaiseInValidation)
        with pytest.raises(RuntimeError, match="boom in validation"):
            trainer(tmp_path / name, callbacks, max_epochs=3).fit(model, *loaders())
        assert forward_hooks(model) == []
        outcomes[name] = modes(model)
    # Lightning's validation loop restores modes only when it ends normally; the callback adds nothing
    assert outcomes["with"] == outcomes["without"]


def test_training_step_raising_leaves_no_hook_and_the_users_modes(tmp_path):
    # Without validation the training epoch is the measurement window: the hooks are on when it raises.
    class RaiseInTraining(Classifier):
        def training_step(self, batch, batch_idx):
            if self.current_epoch == 1 and batch_idx == 2:
                raise RuntimeError("boom in training")
            return super().training_step(batch, batch_idx)

    model = frozen_parts_model(RaiseInTraining)
    before = modes(model)
    callback = EmergenceCallback()
    with pytest.raises(RuntimeError, match="boom in training"):
        trainer(tmp_path, [callback], max_epochs=3).fit(model, loaders()[0])
    assert callback.tracker.attached is False and forward_hooks(model) == []
    assert modes(model) == before
    assert [r["epoch"] for r in callback.history] == [0, 1]


@pytest.mark.parametrize("measured_pass", ["epoch 0", "probe_dataloader"])
def test_the_callbacks_own_pass_raising_restores_every_mode(tmp_path, measured_pass):
    # The callback's own passes (eval mode, forward only) put back each module's mode, even on error.
    calls = []

    def probe_step(module, batch):
        calls.append(module.training)
        if len(calls) == 2:
            raise RuntimeError("boom in the measurement pass")
        return module(batch[0])

    model = frozen_parts_model()
    before = modes(model)
    if measured_pass == "epoch 0":
        callback = EmergenceCallback(probe_step=probe_step)
    else:
        callback = EmergenceCallback(
            probe_step=probe_step, probe_dataloader=loaders()[1], measure_at_start=False
        )
    with pytest.raises(RuntimeError, match="boom in the measurement pass"):
        trainer(tmp_path, [callback], max_epochs=2).fit(model, loaders()[0])
    assert calls == [False, False]  # the pass ran in eval mode
    assert forward_hooks(model) == []
    assert modes(model) == before


class BranchModels(pl.Callback):
    """Branches get copies of this; the class attribute collects every fit's model."""

    seen: ClassVar[list] = []

    def on_train_start(self, trainer, pl_module):
        BranchModels.seen.append((Path(trainer.log_dir).name, pl_module))


class RaiseInPrunedBranch(Classifier):
    where = "validation"
    dense = 0

    def forward(self, x):
        pruned = count_parameters(self) < self.dense
        if self.where == "fork" and pruned and not self.training:
            raise RuntimeError("boom in the pruned branch")  # its first eval pass: the fork measurement
        return super().forward(x)

    def validation_step(self, batch, batch_idx):
        if self.where == "validation" and count_parameters(self) < self.dense and batch_idx == 1:
            raise RuntimeError("boom in the pruned branch")
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("where", ["validation", "fork"])
def test_failed_branch_leaves_the_parent_clean(tmp_path, where):
    BranchModels.seen = []
    model = frozen_parts_model(RaiseInPrunedBranch)
    model.where, model.dense = where, count_parameters(model)
    before = modes(model)
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    with pytest.warns(UserWarning, match=r"branch 'pruned-50' failed: RuntimeError: boom in the pruned"):
        trainer(tmp_path, [EmergenceCallback(), BranchModels(), callback], max_epochs=2, logger=logger).fit(
            model, *loaders()
        )
    statuses = [(r["name"], r["status"]) for r in callback.results]
    assert statuses == [("control", "finished"), ("pruned-50", "failed")]
    assert forward_hooks(model) == [] and modes(model) == before
    assert [name for name, _ in BranchModels.seen[1:]] == ["control", "pruned-50"]  # after the parent
    for _, branch_model in BranchModels.seen:
        assert forward_hooks(branch_model) == []
    BranchModels.seen = []


def test_fingerprint_of_a_model_with_batchnorm():
    # BatchNorm's `num_batches_tracked` is a 0-dim int64 buffer: the fork's fingerprint used to fail on it
    from emergence_lightning.branching import fingerprint

    norm = nn.BatchNorm1d(3)
    before = fingerprint(norm.state_dict())
    norm.num_batches_tracked += 1
    assert fingerprint(norm.state_dict()) != before
