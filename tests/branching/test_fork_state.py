"""Faithful branches: the control continues the parent's optimizer, scheduler, data order and RNG exactly."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch
from tiny_models import blobs, quiet_trainer
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader

from emergence_lightning.branching.fork_state import capture_optimizer, load_optimizer
from emergence_lightning.branching.store import fingerprint
from emergence_lightning.callbacks.emergence import EmergenceCallback
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback


class MomentumStepLR(pl.LightningModule):
    """SGD with momentum, StepLR halving every epoch, shuffled data (global RNG), dropout (global RNG)."""

    def __init__(self, adam: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        self.adam = adam

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        if self.adam:
            optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        }

    def train_dataloader(self):
        return DataLoader(blobs(96, seed=0), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(blobs(40, seed=1), batch_size=20)


class LearningRates(pl.Callback):
    """The learning rate each epoch trained with, by run and epoch (branches get deep copies: a class attribute)."""

    seen: ClassVar[dict] = {}

    def __init__(self, seen: dict) -> None:
        LearningRates.seen = seen

    def on_train_epoch_start(self, trainer, pl_module):
        key = Path(trainer.log_dir).name if trainer.log_dir else "?"
        LearningRates.seen.setdefault(key, {})[trainer.current_epoch] = trainer.optimizers[0].param_groups[0][
            "lr"
        ]


def _trainer(tmp_path: Path, callbacks: list, max_epochs: int = 4) -> pl.Trainer:
    return quiet_trainer(tmp_path, callbacks, max_epochs)


def _unforked(tmp_path: Path, adam: bool, seen: dict) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    model = MomentumStepLR(adam)
    _trainer(tmp_path / "unforked", [EmergenceCallback(), LearningRates(seen)]).fit(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _forked(tmp_path: Path, adam: bool, seen: dict, **kwargs) -> PruneAndBranchCallback:
    pl.seed_everything(0, verbose=False)
    callback = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False, **kwargs)
    _trainer(tmp_path / "forked", [EmergenceCallback(), LearningRates(seen), callback]).fit(
        MomentumStepLR(adam)
    )
    return callback


@pytest.mark.parametrize("adam", [False, True], ids=["sgd-momentum", "adam"])
def test_the_control_is_the_unforked_continuation(tmp_path, adam):
    torch.set_num_threads(1)
    seen: dict = {}
    expected = _unforked(tmp_path, adam, seen)
    callback = _forked(tmp_path, adam, seen)
    seen = LearningRates.seen
    control = next(r for r in callback.results if r["name"] == "control")
    assert control["status"] == "finished", control["error"]
    final = torch.load(control["state_dict"])
    for key, value in expected.items():
        assert torch.allclose(final[key], value, atol=1e-6, rtol=0), key
    # StepLR(gamma=0.5) from lr 0.1 (SGD) / 0.01 (Adam): epoch e trains at lr0 * 0.5**e, forked or not.
    lr0 = 0.01 if adam else 0.1
    assert seen["unforked"] == pytest.approx({e: lr0 * 0.5**e for e in range(4)})
    assert seen["control"] == pytest.approx({2: lr0 * 0.25, 3: lr0 * 0.125})
    assert seen["pruned-50"] == seen["control"]


def test_fresh_optimizer_state_restarts_momentum_and_the_schedule(tmp_path):
    torch.set_num_threads(1)
    seen: dict = {}
    expected = _unforked(tmp_path, False, seen)
    callback = _forked(tmp_path, False, seen, optimizer_state="fresh")
    seen = LearningRates.seen
    control = next(r for r in callback.results if r["name"] == "control")
    final = torch.load(control["state_dict"])
    assert seen["control"] == pytest.approx({2: 0.1, 3: 0.05})  # the schedule from its start again
    assert max((final[k] - v).abs().max().item() for k, v in expected.items()) > 1e-3


def test_pruned_entries_start_the_branch_without_momentum():
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9)
    parent(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    saved = capture_optimizer(optimizer, parent)
    branch = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    branch.load_state_dict(parent.state_dict())
    mask = (torch.arange(12).reshape(3, 4) % 2).float()
    prune.custom_from_mask(branch[0], "weight", mask)  # weight -> weight_orig, now after bias
    branch_optimizer = torch.optim.SGD(branch.parameters(), lr=0.1, momentum=0.9)
    load_optimizer(branch_optimizer, saved, branch, {"0.weight": mask})
    momentum = branch_optimizer.state[branch[0].weight_orig]["momentum_buffer"]
    parent_momentum = optimizer.state[parent[0].weight]["momentum_buffer"]
    assert torch.equal(momentum, parent_momentum * mask)
    assert torch.equal(
        branch_optimizer.state[branch[0].bias]["momentum_buffer"],
        optimizer.state[parent[0].bias]["momentum_buffer"],
    )


def test_an_optimizer_over_other_parameters_is_refused_by_name():
    parent = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    saved = capture_optimizer(torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9), parent)
    branch = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"other parameter groups.*parent only \['1.bias', '1.weight'\]"):
        load_optimizer(torch.optim.SGD(branch[0].parameters(), lr=0.1), saved, branch)


def test_bad_optimizer_state_argument():
    with pytest.raises(ValueError, match=r"`optimizer_state` must be one of .*got 'keep'"):
        PruneAndBranchCallback(optimizer_state="keep")


# ---- the data order whatever owns the randomness ---------------------------------------------------
class OwnGenerator(MomentumStepLR):
    """Shuffles with a generator of its own, built afresh whenever a Trainer asks (as a data module does)."""

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(1)
        return DataLoader(blobs(96, seed=0), batch_size=16, shuffle=True, generator=generator)


def _generator_loaders(sampler: bool = False) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(1)
    data = blobs(96, seed=0)
    if (
        sampler
    ):  # the sampler owns the generator (drawn lazily: Lightning's extra iterator draws nothing from it)
        train = DataLoader(
            data, batch_size=16, sampler=torch.utils.data.RandomSampler(data, generator=generator)
        )
    else:
        train = DataLoader(data, batch_size=16, shuffle=True, generator=generator)
    return train, DataLoader(blobs(40, seed=1), batch_size=20)


def _fit_weights(root: Path, source: str, callbacks: list, max_epochs: int = 4) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    model = OwnGenerator() if source == "module-hook" else MomentumStepLR()
    trainer = _trainer(root, [EmergenceCallback(), *callbacks], max_epochs)
    if source == "module-hook":
        trainer.fit(model)
    else:
        trainer.fit(model, *_generator_loaders(sampler=source == "sampler"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("source", ["fit-argument", "sampler", "module-hook"])
def test_the_control_equals_the_unforked_run_bit_for_bit_with_a_loader_generator(tmp_path, source):
    torch.set_num_threads(1)
    expected = _fit_weights(tmp_path / "unforked", source, [])
    callback = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False)
    _fit_weights(tmp_path / "forked", source, [callback])
    control = next(r for r in callback.results if r["name"] == "control")
    assert control["status"] == "finished", control["error"]
    final = torch.load(control["state_dict"])
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(final[key], value), (key, (final[key] - value).abs().max().item())


def test_the_parent_trains_to_the_fork_as_without_the_callback(tmp_path):
    torch.set_num_threads(1)
    plain = _fit_weights(tmp_path / "plain", "fit-argument", [], max_epochs=2)
    callback = PruneAndBranchCallback(branch_epoch=2, amounts=(0.5,), verbose=False)
    _fit_weights(tmp_path / "forked", "fit-argument", [callback])
    assert callback.fork.fingerprint == fingerprint(plain)  # the weights at the fork, bit for bit


class NoisyBlobs(torch.utils.data.Dataset):
    """Blobs with noise drawn in the loader's worker: the order *and* the worker seeds shape the data."""

    def __init__(self) -> None:
        self.data = blobs(96, seed=0)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        x, y = self.data[index]
        return x + 0.1 * torch.randn(x.shape), y


def test_the_control_equals_the_unforked_run_with_loader_workers(tmp_path):
    torch.set_num_threads(1)

    def fit(root: Path, callbacks: list) -> dict[str, torch.Tensor]:
        pl.seed_everything(0, verbose=False)
        model = MomentumStepLR()
        generator = torch.Generator().manual_seed(1)
        train = DataLoader(NoisyBlobs(), batch_size=32, shuffle=True, generator=generator, num_workers=1)
        _trainer(root, [EmergenceCallback(), *callbacks], 3).fit(model, train, DataLoader(blobs(40, seed=1)))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    expected = fit(tmp_path / "unforked", [])
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    fit(tmp_path / "forked", [callback])
    control = next(r for r in callback.results if r["name"] == "control")
    assert control["status"] == "finished", control["error"]
    final = torch.load(control["state_dict"])
    for key, value in expected.items():
        assert torch.equal(final[key], value), (key, (final[key] - value).abs().max().item())
