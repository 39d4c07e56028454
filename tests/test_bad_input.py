"""The bad-input matrix and the odd models: every argument and model shape a user can get wrong.

Project rule: bad input gets a clear ``ValueError``/``TypeError`` that names the argument and shows
the value received, raised early (``__init__`` for arguments, ``setup`` or the first forward pass
before any training step for the model), and nothing the user wrote is lost.

1. ``ARGUMENT_CASES``: arguments checked when the function or class is called (no Trainer).
2. ``SETUP_CASES``: what only the real model and Trainer reveal, each a real ``Trainer.fit`` that
   must fail before the first training step and leave the model's weights and hooks as they were.
3. The command line.
4. Odd models, each a real fit with ``EmergenceCallback`` checked against an independent count.

``docs/api.md`` ("Bad input") summarises this file.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers.oracle import emergence_oracle
from tiny_models import Classifier, SharedReLU, blobs, loaders, mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import (
    ActivityTracker,
    EmergenceCallback,
    PruneAndBranchCallback,
    count_parameters,
    emergence,
    log10_emergence,
    measure_activity,
    relative_emergence,
)
from emergence_lightning.connectivity import build_edges, path_emergence
from emergence_lightning.paper.cli import main
from emergence_lightning.paper.data import MNIST5kDataModule, MNISTDataModule
from emergence_lightning.paper.models import PaperCNN, PaperMLP

B = torch.tensor  # short for the boolean masks of path_emergence


def net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def one_batch(model: nn.Module, **kwargs: Any):
    return measure_activity(model, [torch.randn(2, 4)], **kwargs)


def varying_lengths():
    """Sequences of 5 then 7 steps with the node dim forced to the time steps: the count changes."""
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    return measure_activity(model, [torch.randn(2, 5, 4), torch.randn(2, 7, 4)], node_dim=1)


# ---- 1. arguments: checked when called ----------------------------------------------------------
@dataclass
class Case:
    id: str
    call: Callable[[], Any]
    error: type[BaseException]
    match: str


ARGUMENT_CASES = [
    # emergence(n, a, m=None, variant="paper")
    Case("emergence-n-not-sequence", lambda: emergence(5, [1]), TypeError, r"`n` must be a sequence of counts.*got 5"),
    Case("emergence-a-none", lambda: emergence([3], None), TypeError, r"`a` must be a sequence of counts.*got None"),
    Case("emergence-n-string", lambda: emergence("32", [1, 1]), TypeError, r"`n` must be a sequence.*got '32'"),
    Case("emergence-bool-count", lambda: emergence([3, True], [1, 1]), TypeError, r"`n` must hold integers, got True at position 1"),
    Case("emergence-inf-count", lambda: emergence([math.inf, 2], [1, 1]), TypeError, r"`n` must hold integers, got inf at position 0"),
    Case("emergence-fraction", lambda: emergence([3, 2], [1, 0.5]), TypeError, r"`a` must hold integers, got 0.5 at position 1"),
    Case("emergence-negative", lambda: emergence([3, -2], [1, 0]), ValueError, r"`n` must hold non-negative counts, got -2"),
    Case("emergence-a-above-n", lambda: emergence([3, 2], [4, 1]), ValueError, r"`a` cannot exceed `n`: a\[0\]=4 > n\[0\]=3"),
    Case("emergence-lengths", lambda: emergence([3, 2], [1]), ValueError, r"`n` and `a` must have the same length.*len\(a\)=1"),
    Case("emergence-m-length", lambda: emergence([3, 2], [1, 1], m=[1]), ValueError, r"`m` must have the same length.*len\(m\)=1"),
    Case(
        "emergence-m-with-induced",
        lambda: emergence([3, 2], [1, 1], m=[1, 1], variant="induced"),
        ValueError,
        r"`m` is used by variant='paper' only, got m=\[1, 1\] with variant='induced'",
    ),
    Case("emergence-variant", lambda: emergence([3], [1], variant=None), ValueError, r"`variant` must be one of \('paper', 'induced'\), got None"),
    # relative_emergence(E, num_parameters), log10_emergence(E)
    Case("relative-E-float", lambda: relative_emergence(1.5, 3), ValueError, r"`E` must be a non-negative int, got 1.5"),
    Case("relative-E-negative", lambda: relative_emergence(-1, 3), ValueError, r"`E` must be a non-negative int, got -1"),
    Case("relative-P-zero", lambda: relative_emergence(5, 0), ValueError, r"`num_parameters` must be a positive int, got 0"),
    Case("relative-P-float", lambda: relative_emergence(5, 2.0), ValueError, r"`num_parameters` must be a positive int, got 2.0"),
    Case("log10-negative", lambda: log10_emergence(-1), ValueError, r"`E` must be a non-negative int, got -1"),
    Case("log10-string", lambda: log10_emergence("3"), ValueError, r"`E` must be a non-negative int, got '3'"),
    # count_parameters(module)
    Case("count-none", lambda: count_parameters(None), TypeError, r"`module` must be a torch.nn.Module, got NoneType"),
    Case("count-list", lambda: count_parameters([nn.Linear(2, 2)]), TypeError, r"`module` must be a torch.nn.Module, got list"),
    # path_emergence(edges, active, variant)
    Case("path-variant", lambda: path_emergence({}, [B([True])], variant="x"), ValueError, r"`variant` must be one of .*got 'x'"),
    Case("path-active-tensor", lambda: path_emergence({}, B([True])), TypeError, r"`active` must be a sequence of 1-D boolean tensors.*got Tensor"),
    Case("path-active-dtype", lambda: path_emergence({}, [B([1])]), TypeError, r"`active\[0\]` must be a boolean tensor, got a tensor of dtype torch.int64"),
    Case("path-active-2d", lambda: path_emergence({}, [B([[True]])]), ValueError, r"`active\[0\]` must be 1-D.*got shape \(1, 1\)"),
    Case("path-edges-list", lambda: path_emergence([], [B([True])]), TypeError, r"`edges` must be a mapping \(i, j\) -> tensor, got list"),
    Case(
        "path-edges-backwards",
        lambda: path_emergence({(1, 0): torch.ones(1, 1)}, [B([True]), B([True])]),
        ValueError,
        r"`edges` keys must satisfy 0 <= i < j < 2.*got \(1, 0\)",
    ),
    Case(
        "path-edges-shape",
        lambda: path_emergence({(0, 1): torch.ones(2, 1)}, [B([True]), B([True])]),
        ValueError,
        r"`edges\[\(0, 1\)\]` must have shape \(n_0, n_1\) = \(1, 1\), got \(2, 1\)",
    ),
    Case("path-edges-key", lambda: path_emergence({0: torch.ones(1, 1)}, [B([True])]), TypeError, r"`edges` keys must be pairs of layer indices \(i, j\), got 0"),
    # build_edges(model, layer_names, example_input)
    Case("edges-model", lambda: build_edges("net", ["1"], torch.randn(2, 4)), TypeError, r"`model` must be a torch.nn.Module, got str"),
    Case("edges-names-string", lambda: build_edges(net(), "1", torch.randn(2, 4)), TypeError, r"`layer_names` must be a sequence of module names, got '1'"),
    Case("edges-names-int", lambda: build_edges(net(), [1], torch.randn(2, 4)), TypeError, r"`layer_names` must hold strings, got 1"),
    Case("edges-input", lambda: build_edges(net(), ["1"], [1, 2]), TypeError, r"`example_input` must be a tensor \(one batch\), got list"),
    Case("edges-unknown", lambda: build_edges(net(), ["9"], torch.randn(2, 4)), ValueError, r"`layer_names` names modules that don't exist in Sequential: \['9'\]"),
    Case("edges-twice", lambda: build_edges(net(), ["1", "1"], torch.randn(2, 4)), ValueError, r"`layer_names` names a layer twice: \['1'\]"),
    Case(
        "edges-input-without-parameters",
        lambda: build_edges(nn.Sequential(nn.ReLU()), ["model-input", "0"], torch.randn(2, 4)),
        ValueError,
        r"`layer_names` has 'model-input', which needs a module with parameters; Sequential has none",
    ),
    # ActivityTracker(model, layers, threshold, statistic, min_firing_rate, node_dim, include_input, include_output)
    Case("tracker-model", lambda: ActivityTracker("net"), TypeError, r"`model` must be a torch.nn.Module, got str"),
    Case("tracker-threshold-bool", lambda: ActivityTracker(net(), threshold=True), TypeError, r"`threshold` must be a number, got True"),
    Case("tracker-threshold-none", lambda: ActivityTracker(net(), threshold=None), TypeError, r"`threshold` must be a number, got None"),
    Case("tracker-threshold-inf", lambda: ActivityTracker(net(), threshold=math.inf), ValueError, r"`threshold` must be a finite number >= 0, got inf"),
    Case("tracker-statistic", lambda: ActivityTracker(net(), statistic=None), ValueError, r"`statistic` must be one of \('mean', 'mean_abs', 'normalized_mean_abs', 'fraction', 'max'\), got None"),
    Case("tracker-rate-nan", lambda: ActivityTracker(net(), min_firing_rate=math.nan), ValueError, r"`min_firing_rate` must be in \[0, 1\), got nan"),
    Case("tracker-rate-string", lambda: ActivityTracker(net(), min_firing_rate="x"), TypeError, r"`min_firing_rate` must be a number, got 'x'"),
    Case("tracker-node-dim-float", lambda: ActivityTracker(net(), node_dim=1.0), TypeError, r"`node_dim` must be an int, a mapping from layer names to ints, or None, got 1.0"),
    Case("tracker-node-dim-batch", lambda: ActivityTracker(net(), node_dim=0), ValueError, r"`node_dim` cannot be 0, the batch dimension, got 0"),
    Case("tracker-layers-int", lambda: ActivityTracker(net(), layers=1), TypeError, r"`layers` must be a sequence of module names \(str\), got 1"),
    Case(
        "tracker-layers-generator",
        lambda: ActivityTracker(net(), layers=(name for name in ["1"])),
        TypeError,
        r"`layers` must be a sequence of module names \(str\), got <generator",
    ),
    Case("tracker-layers-root", lambda: ActivityTracker(net(), layers=[""]), ValueError, r"`layers` names modules that don't exist: \[''\]"),
    Case("tracker-include-input", lambda: ActivityTracker(net(), include_input="yes"), TypeError, r"`include_input` must be True or False, got 'yes'"),
    Case(
        "tracker-output-without-parameters",
        lambda: ActivityTracker(nn.Sequential(nn.ReLU()), include_output=True),
        ValueError,
        r"`include_input`/`include_output` need a module with parameters.*Sequential has none",
    ),
    Case("measure-no-activation", lambda: measure_activity(nn.Linear(4, 2), [torch.randn(3, 4)]), ValueError, r"Linear ran, but no activation was found in its forward pass.*layers=\["),
    # measure_activity(model, batches, **kwargs), and what the first forward pass reveals
    Case("measure-batches-none", lambda: measure_activity(net(), None), TypeError, r"`batches` must be an iterable of model inputs.*got NoneType"),
    Case("measure-batches-tensor", lambda: measure_activity(net(), torch.randn(3, 4)), TypeError, r"`batches` must be an iterable.*`\[x\]` for one batch\), got Tensor"),
    Case("measure-kwarg", lambda: measure_activity(net(), [torch.randn(2, 4)], tresh=0.1), TypeError, r"unexpected keyword argument 'tresh'"),
    Case(
        "measure-node-dim-out-of-range",
        lambda: one_batch(net(), node_dim=5),
        ValueError,
        r"`node_dim`=5 does not fit layer '1', whose output has shape \(2, 3\)",
    ),
    Case(
        "measure-node-dim-is-batch",
        lambda: one_batch(net(), node_dim=-2),
        ValueError,
        r"`node_dim`=-2 does not fit layer '1', whose output has shape \(2, 3\) \(batch on dim 0\)",
    ),
    Case("measure-varying-nodes", varying_lengths, ValueError, r"Layer '1' changed its number of nodes between batches \(node count changed from 5 to 7\).*set `node_dim`"),
    # EmergenceCallback(...)
    Case("callback-threshold-negative", lambda: EmergenceCallback(threshold=-0.5), ValueError, r"`threshold` must be a finite number >= 0, got -0.5"),
    Case("callback-threshold-nan", lambda: EmergenceCallback(threshold=math.nan), ValueError, r"`threshold` must be a finite number >= 0, got nan"),
    Case("callback-threshold-inf", lambda: EmergenceCallback(threshold=-math.inf), ValueError, r"`threshold` must be a finite number >= 0, got -inf"),
    Case("callback-threshold-string", lambda: EmergenceCallback(threshold="0.05"), TypeError, r"`threshold` must be a number, got '0.05'"),
    Case("callback-threshold-bool", lambda: EmergenceCallback(threshold=False), TypeError, r"`threshold` must be a number, got False"),
    Case("callback-statistic", lambda: EmergenceCallback(statistic="median"), ValueError, r"`statistic` must be one of .*got 'median'"),
    Case("callback-rate", lambda: EmergenceCallback(min_firing_rate=1.0), ValueError, r"`min_firing_rate` must be in \[0, 1\), got 1.0"),
    Case("callback-variant", lambda: EmergenceCallback(variant="exact"), ValueError, r"`variant` must be one of \('paper', 'induced'\), got 'exact'"),
    Case("callback-layers-string", lambda: EmergenceCallback(layers="net.1"), TypeError, r"`layers` must be a sequence of module names \(str\), got 'net.1'"),
    Case("callback-layers-empty", lambda: EmergenceCallback(layers=[]), ValueError, r"`layers` must name at least one module, got an empty sequence"),
    Case("callback-layers-twice", lambda: EmergenceCallback(layers=["a", "a"]), ValueError, r"`layers` names a module twice: \['a', 'a'\]"),
    Case("callback-node-dim-bool", lambda: EmergenceCallback(node_dim=True), TypeError, r"`node_dim` must be an int, a mapping from layer names to ints, or None, got True"),
    Case("callback-patience-negative", lambda: EmergenceCallback(patience=-1), ValueError, r"`patience` must be an int >= 0, got -1"),
    Case("callback-patience-float", lambda: EmergenceCallback(patience=1.5), ValueError, r"`patience` must be an int >= 0, got 1.5"),
    Case("callback-patience-string", lambda: EmergenceCallback(patience="2"), ValueError, r"`patience` must be an int >= 0, got '2'"),
    Case("callback-prefix-slash", lambda: EmergenceCallback(prefix="a/"), ValueError, r"`prefix` must be a non-empty string not ending in '/', got 'a/'"),
    Case("callback-prefix-none", lambda: EmergenceCallback(prefix=None), ValueError, r"`prefix` must be a non-empty string.*got None"),
    Case("callback-connectivity", lambda: EmergenceCallback(connectivity="sparse"), ValueError, r"`connectivity` must be one of \('dense', 'weights'\), got 'sparse'"),
    Case("callback-probe-step", lambda: EmergenceCallback(probe_step="forward"), TypeError, r"`probe_step` must be callable, got 'forward'"),
    Case("callback-probe-int", lambda: EmergenceCallback(probe_dataloader=3), TypeError, r"`probe_dataloader` must be a DataLoader \(or any iterable of batches\), got int"),
    Case("callback-probe-tensor", lambda: EmergenceCallback(probe_dataloader=torch.randn(4, 8)), TypeError, r"`probe_dataloader` must be a DataLoader.*got Tensor"),
    Case("callback-probe-empty", lambda: EmergenceCallback(probe_dataloader=[]), ValueError, r"`probe_dataloader` has no batch to measure, got \[\]"),
    Case("callback-stop-at-zero", lambda: EmergenceCallback(stop_at_zero="yes"), TypeError, r"`stop_at_zero` must be True or False, got 'yes'"),
    Case("callback-measure-at-start", lambda: EmergenceCallback(measure_at_start=None), TypeError, r"`measure_at_start` must be True or False, got None"),
    Case("callback-histograms", lambda: EmergenceCallback(log_histograms=2), TypeError, r"`log_histograms` must be True or False, got 2"),
    Case("callback-include-input", lambda: EmergenceCallback(include_input="no"), TypeError, r"`include_input` must be True or False, got 'no'"),
    Case("callback-include-output", lambda: EmergenceCallback(include_output=[]), TypeError, r"`include_output` must be True or False, got \[\]"),
    Case("callback-unknown-argument", lambda: EmergenceCallback(source="probe"), TypeError, r"unexpected keyword argument 'source'"),
    # PruneAndBranchCallback(...)
    Case("branch-amount-one", lambda: PruneAndBranchCallback(amounts=[1.0]), ValueError, r"`amounts` must hold fractions in \[0, 1\), got 1.0"),
    Case("branch-amount-negative", lambda: PruneAndBranchCallback(amounts=[0.3, -0.1]), ValueError, r"`amounts` must hold fractions in \[0, 1\), got -0.1 in \[0.3, -0.1\]"),
    Case("branch-amount-nan", lambda: PruneAndBranchCallback(amounts=[math.nan]), ValueError, r"`amounts` must hold fractions in \[0, 1\), got nan"),
    Case("branch-amount-string", lambda: PruneAndBranchCallback(amounts=["0.3"]), ValueError, r"`amounts` must hold fractions in \[0, 1\), got '0.3'"),
    Case("branch-amount-bool", lambda: PruneAndBranchCallback(amounts=[True]), ValueError, r"`amounts` must hold fractions in \[0, 1\), got True"),
    Case(
        "branch-amounts-repeated",
        lambda: PruneAndBranchCallback(amounts=[0.3, 0.301]),
        ValueError,
        r"`amounts` must be distinct \(as whole percents.*got \[0.3, 0.301\]: pruned-30 more than once",
    ),
    Case("branch-amounts-empty", lambda: PruneAndBranchCallback(amounts=()), ValueError, r"`amounts` must be a non-empty sequence of fractions in \[0, 1\), got \(\)"),
    Case("branch-amounts-scalar", lambda: PruneAndBranchCallback(amounts=0.5), TypeError, r"`amounts` must be a non-empty sequence.*got 0.5"),
    Case("branch-amounts-none", lambda: PruneAndBranchCallback(amounts=None), TypeError, r"`amounts` must be a non-empty sequence.*got None"),
    Case("branch-epoch-zero", lambda: PruneAndBranchCallback(branch_epoch=0), ValueError, r"`branch_epoch` must be an int >= 1, got 0"),
    Case("branch-epoch-float", lambda: PruneAndBranchCallback(branch_epoch=2.0), ValueError, r"`branch_epoch` must be an int >= 1, got 2.0"),
    Case("branch-pruning-fn", lambda: PruneAndBranchCallback(pruning_fn="l2_unstructured"), ValueError, r"`pruning_fn` must be one of .*got 'l2_unstructured'"),
    Case(
        "branch-pruning-norm",
        lambda: PruneAndBranchCallback(pruning_fn="ln_structured", pruning_norm="l2"),
        ValueError,
        r"`pruning_norm` must be a number .* or 'fro'/'nuc'.*got 'l2'",
    ),
    Case("branch-pruning-norm-nan", lambda: PruneAndBranchCallback(pruning_norm=math.nan), ValueError, r"`pruning_norm` must be a number.*got nan"),
    Case("branch-pruning-dim", lambda: PruneAndBranchCallback(pruning_dim="0"), TypeError, r"`pruning_dim` must be an int, got '0'"),
    Case("branch-global", lambda: PruneAndBranchCallback(use_global_unstructured="yes"), ValueError, r"`use_global_unstructured` must be True, False or None, got 'yes'"),
    Case(
        "branch-global-structured",
        lambda: PruneAndBranchCallback(pruning_fn="random_structured", use_global_unstructured=True),
        ValueError,
        r"`use_global_unstructured=True` works with unstructured pruning only, got `pruning_fn`='random_structured'",
    ),
    Case("branch-parameter-names-string", lambda: PruneAndBranchCallback(parameter_names="weight"), ValueError, r"`parameter_names` must be a non-empty sequence of names, got 'weight'"),
    Case("branch-parameter-names-int", lambda: PruneAndBranchCallback(parameter_names=[1]), ValueError, r"`parameter_names` must be a non-empty sequence of names, got \[1\]"),
    Case("branch-modules-string", lambda: PruneAndBranchCallback(modules="net.0"), ValueError, r"`modules` must be None or a non-empty sequence of module names, got 'net.0'"),
    Case("branch-trainer-kwargs-callbacks", lambda: PruneAndBranchCallback(trainer_kwargs={"callbacks": []}), ValueError, r"`trainer_kwargs` may not set \['callbacks'\]"),
    Case("branch-trainer-kwargs-logger", lambda: PruneAndBranchCallback(trainer_kwargs={"logger": False}), ValueError, r"`trainer_kwargs` may not set \['logger'\]"),
    Case("branch-trainer-kwargs-type", lambda: PruneAndBranchCallback(trainer_kwargs="max_epochs=3"), TypeError, r"`trainer_kwargs` must be a dict of Trainer arguments, got str"),
    Case(
        "branch-trainer-kwargs-typo",
        lambda: PruneAndBranchCallback(trainer_kwargs={"max_epoch": 3}),
        ValueError,
        r"`trainer_kwargs` has arguments the Trainer does not take: \['max_epoch'\]",
    ),
    Case("branch-monitor", lambda: PruneAndBranchCallback(monitor=3), ValueError, r"`monitor` must be None or a metric name, got 3"),
    Case("branch-mode", lambda: PruneAndBranchCallback(mode="up"), ValueError, r"`mode` must be 'min', 'max' or None, got 'up'"),
    Case("branch-seed", lambda: PruneAndBranchCallback(seed=None), TypeError, r"`seed` must be an int, got None"),
    Case("branch-flag", lambda: PruneAndBranchCallback(random_controls="no"), TypeError, r"`random_controls` must be True or False, got 'no'"),
    Case("branch-datamodule", lambda: PruneAndBranchCallback(branch_datamodule=object()), TypeError, r"`branch_datamodule` must be a LightningDataModule, got object"),
    Case(
        "branch-val-without-train",
        lambda: PruneAndBranchCallback(branch_val_dataloaders=[1]),
        ValueError,
        r"`branch_val_dataloaders` needs `branch_train_dataloaders` too, got branch_train_dataloaders=None",
    ),
    # models and data
    Case("mlp-hidden-int", lambda: PaperMLP(hidden=5), ValueError, r"`hidden` must be a non-empty sequence of positive integers, got 5"),
    Case("mlp-hidden-zero", lambda: PaperMLP(hidden=(128, 0)), ValueError, r"`hidden` must be .*got \(128, 0\)"),
    Case("mlp-input-shape", lambda: PaperMLP(input_shape=784), ValueError, r"`input_shape` must be three positive integers \(C, H, W\), got 784"),
    Case("mlp-lr-string", lambda: PaperMLP(lr="0.1"), ValueError, r"`lr` must be positive, got '0.1'"),
    Case("mlp-lr-inf", lambda: PaperMLP(lr=math.inf), ValueError, r"`lr` must be finite, got inf"),
    Case("mlp-momentum", lambda: PaperMLP(momentum="0.9"), ValueError, r"`momentum` must be in \[0, 1\), got '0.9'"),
    Case("mlp-classes", lambda: PaperMLP(num_classes=1), ValueError, r"`num_classes` must be an integer >= 2, got 1"),
    Case("cnn-channels", lambda: PaperCNN(channels=(16, -1)), ValueError, r"`channels` must be .*got \(16, -1\)"),
    Case("cnn-too-small", lambda: PaperCNN(input_shape=(1, 4, 4), channels=(8, 8, 8)), ValueError, r"`input_shape` \(1, 4, 4\) is too small for 3 pooling blocks"),
    Case("data-batch-size", lambda: MNIST5kDataModule(batch_size=0), ValueError, r"`batch_size` must be a positive integer, got 0"),
    Case("data-fraction-nan", lambda: MNIST5kDataModule(val_fraction=math.nan), ValueError, r"`val_fraction` must be a number in \(0, 1\), got nan"),
    Case("data-fractions-sum", lambda: MNIST5kDataModule(val_fraction=0.5, test_fraction=0.5), ValueError, r"`val_fraction` \+ `test_fraction` must be below 1, got 0.5 \+ 0.5"),
    Case("data-workers", lambda: MNIST5kDataModule(num_workers=-1), ValueError, r"`num_workers` must be a non-negative integer, got -1"),
    Case("data-seed", lambda: MNIST5kDataModule(seed="0"), TypeError, r"`seed` must be an int, got '0'"),
    Case("data-val-size", lambda: MNISTDataModule(val_size=0), ValueError, r"`val_size` must be a positive integer, got 0"),
]  # fmt: skip


def test_matrix_ids_are_unique():
    ids = [case.id for case in ARGUMENT_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", ARGUMENT_CASES, ids=lambda case: case.id)
def test_bad_argument(case: Case):
    with pytest.raises(case.error, match=case.match):
        case.call()


# ---- 2. the model and the Trainer: checked in setup, or by the first forward pass before training ----
class Recorder(Classifier):
    """Counts its training steps, so a test can tell that an error came before the first one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        return super().training_step(batch, batch_idx)


class DictBatches(Recorder):
    """Takes batches as dicts, which the epoch-0 pass cannot feed to the model without `probe_step`."""

    def training_step(self, batch, batch_idx):
        return super().training_step((batch["x"], batch["y"]), batch_idx)

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch["x"], batch["y"]), batch_idx)


def dict_loaders():
    def as_dicts(rows):
        return [{"x": x, "y": y} for x, y in zip(*rows.tensors)]

    return DataLoader(as_dicts(blobs(48)), batch_size=16), DataLoader(
        as_dicts(blobs(16, seed=1)), batch_size=16
    )


class NoLinear(Recorder):
    def __init__(self) -> None:
        super().__init__(nn.ReLU())
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return self.net(x * self.scale)[:, :3]


@dataclass
class SetupCase:
    id: str
    model: Callable[[], Recorder]
    callbacks: Callable[[], list[pl.Callback]]
    error: type[BaseException]
    match: str
    trainer: dict[str, Any]


def _mlp() -> Recorder:
    return Recorder(mlp())


SETUP_CASES = [
    SetupCase("no-trackable-layer", lambda: Recorder(nn.Sequential(nn.Linear(8, 3))), lambda: [EmergenceCallback()],
              ValueError, r"Recorder ran, but no activation was found in its forward pass.*layers=\[", {}),
    SetupCase("unknown-layer", _mlp, lambda: [EmergenceCallback(layers=["net.1", "net.9"])],
              ValueError, r"`layers` names modules that don't exist: \['net.9'\]. Some valid names: \['net', 'net.0'", {}),
    SetupCase("root-as-layer", _mlp, lambda: [EmergenceCallback(layers=[""])],
              ValueError, r"`layers` names modules that don't exist: \[''\]", {}),
    SetupCase("node-dim-out-of-range", _mlp, lambda: [EmergenceCallback(node_dim=2)],
              ValueError, r"`node_dim`=2 does not fit layer 'net.1', whose output has shape \(16, 16\)", {}),
    SetupCase("branch-epoch-equals-max-epochs", _mlp, lambda: [PruneAndBranchCallback(branch_epoch=2)],
              ValueError, r"`branch_epoch`=2 must be below the Trainer's `max_epochs`, got 2", {"max_epochs": 2}),
    SetupCase("branch-epoch-infinite-training", _mlp, lambda: [PruneAndBranchCallback(branch_epoch=1)],
              ValueError, r"`branch_epoch`=1 must be below the Trainer's `max_epochs`, got max_epochs=-1", {"max_epochs": -1}),
    SetupCase("branch-trainer-kwargs-max-epochs", _mlp,
              lambda: [PruneAndBranchCallback(branch_epoch=1, trainer_kwargs={"max_epochs": 1})],
              ValueError, r"`branch_epoch`=1 must be below the Trainer's `trainer_kwargs\['max_epochs'\]`, got 1", {}),
    SetupCase("branch-min-epochs", _mlp, lambda: [PruneAndBranchCallback(branch_epoch=1)],
              ValueError, r"`min_epochs`=2 keeps the parent training past `branch_epoch`=1", {"min_epochs": 2}),
    SetupCase("branch-nothing-to-prune", NoLinear, lambda: [PruneAndBranchCallback(branch_epoch=1)],
              ValueError, r"NoLinear has no module to prune: no nn.Linear or nn.Conv\*d", {}),
    SetupCase("branch-unknown-module", _mlp, lambda: [PruneAndBranchCallback(branch_epoch=1, modules=["net.0", "net.7"])],
              ValueError, r"`modules` names \['net.7'\], which Recorder does not have", {}),
    SetupCase("branch-missing-parameter", _mlp,
              lambda: [PruneAndBranchCallback(branch_epoch=1, parameter_names=("weight", "scale"))],
              ValueError, r"`parameter_names` includes 'scale', but module 'net.0' \(Linear\) has no such parameter", {}),
]  # fmt: skip


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("case", SETUP_CASES, ids=lambda case: case.id)
def test_model_error_before_any_training_step(case: SetupCase, tmp_path):
    torch.manual_seed(0)
    model = case.model()
    before = copy.deepcopy(model.state_dict())
    trainer_kwargs = {"max_epochs": 3, **case.trainer}
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=case.callbacks(),
        **trainer_kwargs,
    )
    data = dict_loaders() if isinstance(model, DictBatches) else loaders(samples=48, val_samples=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own notes (few workers, ...) are not the point
        with pytest.raises(case.error, match=case.match):
            trainer.fit(model, *data)
    assert model.training_steps == 0
    assert trainer.global_step == 0
    # nothing the user wrote is lost: the same weights, no hook of ours left, nothing written
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert hooks(model) == 0
    assert not list(tmp_path.rglob("branches"))


def test_spawned_strategy_is_refused_in_setup(tmp_path):
    callback = PruneAndBranchCallback(branch_epoch=1)
    trainer = pl.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"must be single-device or `strategy='ddp'`.*got DDPStrategy\(start_method='spawn'\)",
    ):
        callback.setup(trainer, Recorder(mlp()), "fit")
    # naming the branches' strategy is the way out
    with pytest.warns(UserWarning, match=r"the Trainer has no logger, so the branches log nothing"):
        PruneAndBranchCallback(branch_epoch=1, trainer_kwargs={"strategy": "auto"}).setup(
            trainer, Recorder(mlp()), "fit"
        )


def test_fixes_named_in_the_messages_work(tmp_path):
    """The shared ReLU and the dict batches, fixed the way their errors say."""
    trainer_kwargs = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    explicit = EmergenceCallback(layers=["net.fc1", "net.fc2"])
    pl.Trainer(callbacks=[explicit], **trainer_kwargs).fit(Recorder(SharedReLU()), *loaders(48, 16))
    assert explicit.history[-1]["layers"] == ["net.fc1", "net.fc2"]
    probed = EmergenceCallback(probe_step=lambda module, batch: module(batch["x"]))
    pl.Trainer(callbacks=[probed], **trainer_kwargs).fit(DictBatches(mlp()), *dict_loaders())
    assert [record["epoch"] for record in probed.history] == [0, 1]


# ---- 3. the command line -----------------------------------------------------------------------------
@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["reproduce", "mlp-prune", "--amounts", "0.3,1.5"],
            r"amounts must be fractions in \[0, 1\), got '0.3,1.5'",
        ),
        (
            ["reproduce", "mlp-prune", "--amounts", "a,b"],
            r"amounts must be comma-separated numbers, got 'a,b'",
        ),
        (["reproduce", "cnn", "--channels", "16,-2"], r"widths must be positive integers, got '16,-2'"),
        (["reproduce", "cnn", "--hidden", "64x"], r"widths must be comma-separated integers, got '64x'"),
        (["demo", "--epochs-before", "two"], r"argument --epochs-before: invalid int value: 'two'"),
    ],
)
def test_cli_rejects_bad_values_while_parsing(argv, match, capsys):
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--threads", "0"], r"`--threads` must be >= 1, got 0"),
        (["--epochs-before", "0"], r"`epochs_before` must be a positive integer, got 0"),
        (["--seeds", "0"], r"`seeds` must be a positive integer, got 0"),
        (["--threshold", "-1"], r"`threshold` must be a finite number >= 0, got -1.0"),
        (["--amounts", "0.3,0.3"], r"`amounts` must be distinct .* pruned-30 more than once"),
        (["--dataset", "imagenet"], r"`dataset` must be one of .*got 'imagenet'"),
    ],
)
def test_cli_reports_bad_settings_before_training(argv, match, tmp_path, capsys, keep_threads):
    code = main(
        ["reproduce", "mlp-prune", "--dataset", "mnist5k", "--log-dir", str(tmp_path), "--no-progress", *argv]
    )
    assert code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not list(tmp_path.rglob("events.out.tfevents*"))  # nothing trained


# ---- 4. odd models ---------------------------------------------------------------------------------
def fit(tmp_path, model, callback, max_epochs=2, data=None):
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    train, val = data or loaders(samples=48, val_samples=24)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r".*(num_workers|returned `None`|LeafSpec).*",  # Lightning's notes, not ours
        )
        trainer.fit(model, train, val)
    assert hooks(model) == 0  # the tracker's hooks are gone after every fit
    return trainer, val


def independent(layer_outputs: Callable[[torch.Tensor], list[torch.Tensor]], val: DataLoader, threshold=0.05):
    """(n, a, E) from per-node means of |output| (the default statistic) over the validation data.

    ``layer_outputs(x)`` returns each layer's output with the nodes in the last dimension; every
    other dimension (samples, positions) is averaged over.
    """
    sums: list[torch.Tensor] = []
    rows: list[int] = []
    with torch.no_grad():
        for x, _ in val:
            for index, out in enumerate(layer_outputs(x)):
                flat = out.reshape(-1, out.shape[-1]).double().abs()
                if index == len(sums):
                    sums.append(flat.sum(0))
                    rows.append(0)
                else:
                    sums[index] += flat.sum(0)
                rows[index] += flat.shape[0]
    means = [total / count for total, count in zip(sums, rows)]
    n = [int(mean.numel()) for mean in means]
    a = [int((mean > threshold).sum()) for mean in means]  # NaN > threshold is False: never active
    return n, a, emergence_oracle(n, a)


class NoParameters(pl.LightningModule):
    """(a) No parameter at all: two activations and a fixed shift held in a buffer; nothing to train."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.linspace(-1.0, 4.0, 8))
        self.act1, self.act2 = nn.ReLU(), nn.Tanh()

    def forward(self, x):
        return self.act2(self.act1(x - self.shift))

    def training_step(self, batch, batch_idx):
        return None  # nothing to optimise

    def validation_step(self, batch, batch_idx):
        self(batch[0])

    def configure_optimizers(self):
        return None


def test_odd_model_without_parameters(tmp_path):
    model = NoParameters()
    callback = EmergenceCallback()
    with pytest.warns(
        UserWarning, match=r"NoParameters has no trainable parameter: relative emergence is logged as NaN"
    ):
        _, val = fit(tmp_path, model, callback)
    assert [record["epoch"] for record in callback.history] == [0, 1, 2]
    n, a, E = independent(
        lambda x: [model.act1(x - model.shift), model.act2(model.act1(x - model.shift))], val
    )
    for record in callback.history:
        assert (record["n"], record["a"], record["E"]) == (n, a, E)
        assert record["parameters"] == 0
        assert math.isnan(record["relative"])  # documented in docs/measure.md; never a ZeroDivisionError
    assert E > 0
    # the pure function refuses rather than dividing by zero
    with pytest.raises(ValueError, match=r"`num_parameters` must be a positive int, got 0"):
        relative_emergence(E, count_parameters(model))


def test_odd_model_reusing_one_activation(tmp_path):
    """(b) One nn.ReLU used after both hidden layers: one layer per call, each of its own width."""
    model = Recorder(SharedReLU())
    callback = EmergenceCallback()
    fit(tmp_path, model, callback)
    assert callback.history[-1]["layers"] == ["net.act", "net.act-call2"]
    assert callback.history[-1]["n"] == [6, 6]  # fc1 and fc2 both have 6 outputs
    assert hooks(model) == 0


class TwoHidden(Classifier):
    """fc1 -> ReLU -> fc2 -> ReLU -> out, with the hidden layers of a fixed draw."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Identity(), lr=0.05)
        self.fc1, self.act1 = nn.Linear(8, 10), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(10, 6), nn.ReLU()
        self.out = nn.Linear(6, 3)
        with torch.no_grad():
            self.fc1.bias[:4] = -3.0  # some dead nodes, so E > 0

    def hidden(self, x):
        h1 = self.act1(self.fc1(x))
        return [h1, self.act2(self.fc2(h1))]

    def logits(self, x):
        return self.out(self.hidden(x)[-1])


class TupleOutput(TwoHidden):
    """(c) forward returns a tuple (logits, hidden)."""

    def forward(self, x):
        h1 = self.act1(self.fc1(x))
        h2 = self.act2(self.fc2(h1))
        return self.out(h2), h2

    def training_step(self, batch, batch_idx):
        logits, _ = self(batch[0])
        return nn.functional.cross_entropy(logits, batch[1])

    def validation_step(self, batch, batch_idx):
        self(batch[0])


class DictOutput(TwoHidden):
    """(d) forward returns a dict."""

    def forward(self, x):
        h1 = self.act1(self.fc1(x))
        h2 = self.act2(self.fc2(h1))
        return {"logits": self.out(h2), "features": h2}

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0])["logits"], batch[1])

    def validation_step(self, batch, batch_idx):
        self(batch[0])


@pytest.mark.parametrize("model_class", [TupleOutput, DictOutput])
def test_odd_model_returning_a_tuple_or_a_dict(model_class, tmp_path):
    model = model_class()
    callback = EmergenceCallback(connectivity="weights", include_output=True)
    _, val = fit(tmp_path, model, callback)
    record = callback.history[-1]  # measured after the last epoch, with the weights the model has now
    assert record["layers"] == ["act1", "act2", "model-output"]
    n, a, E = independent(lambda x: [*model.hidden(x), model.logits(x)], val)
    assert (record["n"], record["a"], record["E"]) == (n, a, E)
    assert E > 0
    assert record["E_path"] == E  # dense layers: the weights' graph gives the same count


class FrozenFirstLayer(TwoHidden):
    """(e) fc1 frozen (requires_grad=False): its ReLU is still a layer, its weights are not counted in P."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1.requires_grad_(False)

    def forward(self, x):
        return self.logits(x)


def test_odd_model_with_a_frozen_submodule(tmp_path):
    model = FrozenFirstLayer()
    frozen = copy.deepcopy(model.fc1.state_dict())
    callback = EmergenceCallback()
    _, val = fit(tmp_path, model, callback)
    trainable = sum(p.numel() for p in (*model.fc2.parameters(), *model.out.parameters()))
    record = callback.history[-1]
    n, a, E = independent(model.hidden, val)
    assert (record["n"], record["a"], record["E"]) == (n, a, E) and n == [10, 6]
    # docs/measure.md: "A frozen submodule does not count" in P
    assert record["parameters"] == trainable == count_parameters(model)
    assert record["relative"] == E / trainable
    assert all(torch.equal(value, frozen[key]) for key, value in model.fc1.state_dict().items())


class Sequence3D(Classifier):
    """(f) Linear on (batch, time, features) -> ReLU -> Linear -> ReLU, then a mean over time."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Identity(), lr=0.05)
        self.fc1, self.act1 = nn.Linear(4, 6), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(6, 5), nn.ReLU()
        self.out = nn.Linear(5, 3)
        with torch.no_grad():
            self.fc1.bias[:3] = -3.0

    def hidden(self, x):
        h1 = self.act1(self.fc1(x))
        return [h1, self.act2(self.fc2(h1))]

    def forward(self, x):
        return self.out(self.hidden(x)[-1].mean(dim=1))


def sequences(samples: int, seed: int) -> TensorDataset:
    x, y = blobs(samples, features=28, seed=seed).tensors
    return TensorDataset(x.reshape(samples, 7, 4), y)  # 7 time steps of 4 features


def test_odd_model_with_sequence_activations(tmp_path):
    data = (DataLoader(sequences(48, 0), batch_size=16), DataLoader(sequences(24, 1), batch_size=16))
    # default node_dim: decided from the producing Linear, so the features (6 and 5), not the 7 steps
    model = Sequence3D()
    default = EmergenceCallback()
    _, val = fit(tmp_path / "default", model, default, max_epochs=1, data=data)
    record = default.history[-1]
    n, a, E = independent(model.hidden, val)
    assert (record["n"], record["a"], record["E"]) == (n, a, E) and n == [6, 5]
    # node_dim=1 on request: the 7 time steps
    forced = EmergenceCallback(node_dim=1)
    fit(tmp_path / "forced", Sequence3D(), forced, max_epochs=1, data=data)
    assert forced.history[-1]["n"] == [7, 7]
    assert E > 0


class NaNNode(TwoHidden):
    """(g1) Node 0 of act1 is NaN on every sample; the model zeroes it before fc2, so the loss stays finite."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.fc1.bias[0] = math.nan

    def hidden(self, x):
        h1 = self.act1(self.fc1(x))
        return [h1, self.act2(self.fc2(torch.nan_to_num(h1)))]

    def forward(self, x):
        return self.out(self.hidden(x)[-1])

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses = [*getattr(self, "losses", []), float(loss)]
        return loss


def test_odd_model_with_a_nan_node(tmp_path):
    model = NaNNode()
    callback = EmergenceCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, val = fit(tmp_path, model, callback)
    ours = [str(w.message) for w in caught if "NaN or inf" in str(w.message)]
    assert ours == [  # each once
        "Layer 'act1': 1 of 10 nodes produced NaN or inf; they are counted as inactive.",
        "EmergenceCallback: layers ['act1'] produced NaN or inf (has training diverged?): `emergence/E`, "
        "`log10_E` and `relative` are logged as NaN, not counted, so `EarlyStopping(check_finite=True)` stops "
        "on them and `stop_at_zero` does not count them.",
    ]
    assert [record["epoch"] for record in callback.history] == [0, 1, 2]
    n, a, E = independent(model.hidden, val)
    record = callback.history[-1]
    assert (record["n"], record["a"]) == (n, a) and record.nonfinite_layers == ("act1",)
    # A non-finite measurement is never a count (issue 17): E and its logs are NaN.
    assert math.isnan(record["E"]) and math.isnan(record["log10_E"]) and math.isnan(record["relative"])
    assert E > 0 and all(math.isfinite(loss) for loss in model.losses)
    assert callback.tracker is not None


class NaNOutput(TwoHidden):
    """(g2) The logits are NaN: the user's loss is NaN, training goes on; the measurement must too."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.out.bias[1] = math.nan

    def forward(self, x):
        return self.logits(x)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses = [*getattr(self, "losses", []), float(loss)]
        return loss


def test_odd_model_with_nan_output(tmp_path):
    model = NaNOutput()
    callback = EmergenceCallback(include_output=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(tmp_path, model, callback)
    assert trainer.current_epoch == 2 and len(model.losses) == 6  # every step ran
    assert all(math.isnan(loss) for loss in model.losses)  # the NaN is in the user's loss, not raised by us
    # epoch 0: one NaN logit; the NaN gradients then reach every weight that had a gradient
    ours = [
        str(w.message)
        for w in caught
        if "NaN or inf" in str(w.message) and w.message.args[0].startswith("Layer")
    ]
    assert ours[0] == "Layer 'model-output': 1 of 3 nodes produced NaN or inf; they are counted as inactive."
    assert sorted(message.split(":")[0] for message in ours) == [
        "Layer 'act1'",
        "Layer 'act2'",
        "Layer 'model-output'",
    ]
    first, *later = callback.history
    assert (
        first["layers"] == ["act1", "act2", "model-output"] and first["a"][-1] <= 2
    )  # the NaN node is inactive
    for record in later:
        assert record["a"][1:] == [0, 0]  # every node NaN: none active
        assert math.isnan(record["E"]) and math.isnan(record["log10_E"])  # never E = 0 "converged"


def test_numpy_bool_is_no_count_but_numpy_numbers_are_accepted():
    import numpy as np

    from emergence_lightning import emergence
    from emergence_lightning.paper.models import PaperMLP

    with pytest.raises(TypeError, match=r"`a` must hold integers, got .*True.* at position 0"):
        emergence([3, 3], [np.True_, 2])
    assert emergence(np.array([3, 3]), np.array([1, 2])) == emergence([3, 3], [1, 2])
    model = PaperMLP(lr=np.float32(0.01), momentum=np.float64(0.5))
    assert model.configure_optimizers().param_groups[0]["lr"] == pytest.approx(0.01)
