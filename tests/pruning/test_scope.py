"""Pruning scope: exactly the trainable weights that `P` counts, attention's q/k/v and out_proj included."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import pytest
import torch
from tiny_models import Classifier, loaders
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer

from emergence_lightning.branching import find_prunable, masks, prune_model
from emergence_lightning.callbacks.prune_and_branch import PruneAndBranchCallback
from emergence_lightning.pruning import count_parameters


class Snapshots(pl.Callback):
    """Each fit's effective weights at its start and end, by run name (a class attribute: branches get copies)."""

    runs: ClassVar[dict[str, dict]] = {}

    @staticmethod
    def _effective(pl_module):
        named = dict(pl_module.named_modules())
        weights = {}
        for qualified in masks(pl_module):
            module_name, _, tensor = qualified.rpartition(".")
            weights[qualified] = getattr(named[module_name], tensor).detach().clone()
        for name, parameter in pl_module.named_parameters():
            weights.setdefault(name.removesuffix("_orig"), parameter.detach().clone())
        return weights

    def on_train_start(self, trainer, pl_module):
        Snapshots.runs[Path(trainer.log_dir).name] = {
            "start": self._effective(pl_module),
            "masks": masks(pl_module),
        }

    def on_train_end(self, trainer, pl_module):
        Snapshots.runs[Path(trainer.log_dir).name]["end"] = self._effective(pl_module)


def _fit(tmp_path, model, callback, train, val, max_epochs=2):
    Snapshots.runs = {}
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="", version=""),
        callbacks=[Snapshots(), callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    return {result["name"]: result for result in callback.results}


class FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_a_frozen_backbone_is_not_pruned_and_the_amount_is_of_the_trainable_weights(tmp_path):
    train, val = loaders()
    callback = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    results = _fit(tmp_path, Classifier(FrozenBackbone(), lr=0.1), callback, train, val)
    pruned = results["pruned-50"]
    assert pruned["status"] == "finished", pruned["error"]
    assert pruned["pruned_tensors"] == ["net.head.weight"]
    assert results["control"]["pruned_tensors"] == []
    # P: the head's 16*3 weights + 3 biases are trainable; half the 48 weights pruned.
    assert pruned["parameters_dense"] == 51
    assert pruned["parameters"] == 51 - 24


def test_naming_a_frozen_module_still_prunes_it():
    model = FrozenBackbone()
    names = [f"{m}.{t}" for m, _, t in find_prunable(model, modules=["backbone.0", "head"])]
    assert names == ["backbone.0.weight", "head.weight"]


def test_only_frozen_weights_is_refused_with_the_count():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).requires_grad_(False)
    with pytest.raises(ValueError, match=r"nothing trainable to prune: all 2 candidate tensors are frozen"):
        find_prunable(model)


def _vit() -> VisionTransformer:
    return VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
    )


def test_attention_weights_are_pruned_in_a_vit():
    vit = _vit()
    names = [f"{m}.{t}" for m, _, t in find_prunable(vit)]
    for layer in range(2):
        prefix = f"encoder.layers.encoder_layer_{layer}"
        assert f"{prefix}.self_attention.in_proj_weight" in names
        assert f"{prefix}.self_attention.out_proj.weight" in names
        assert f"{prefix}.mlp.0.weight" in names
    assert "conv_proj.weight" in names and "heads.head.weight" in names
    dense = count_parameters(vit)
    prune_model(vit, 0.5)
    pruned_weights = sum(int((mask == 0).sum()) for mask in masks(vit).values())
    # Global pruning zeroes half of every pruned tensor's entries together.
    total = sum(getattr(m, t + "_orig").numel() for _, m, t in find_prunable(vit))
    assert pruned_weights == round(0.5 * total)
    assert count_parameters(vit) == dense - pruned_weights


def _images(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(samples, 3, 8, 8, generator=generator), torch.arange(samples) % 3)


def test_every_kept_attention_weight_of_a_vit_branch_trains(tmp_path):
    train = DataLoader(_images(48, 0), batch_size=16)
    val = DataLoader(_images(16, 1), batch_size=16)
    # Per tensor: torchvision zero-initialises the head, which global magnitude pruning would cut off whole.
    callback = PruneAndBranchCallback(
        branch_epoch=1, amounts=(0.5,), use_global_unstructured=False, verbose=False
    )
    results = _fit(tmp_path, Classifier(_vit(), lr=0.1), callback, train, val, max_epochs=3)
    assert results["pruned-50"]["status"] == "finished", results["pruned-50"]["error"]
    run = Snapshots.runs["pruned-50"]
    for name in ("self_attention.in_proj_weight", "self_attention.out_proj.weight"):
        key = f"net.encoder.layers.encoder_layer_0.{name}"
        mask = run["masks"][key]
        change = (run["end"][key] - run["start"][key]).abs()
        assert bool((run["end"][key][mask == 0] == 0).all()), key
        assert bool((change[mask == 1] > 0).all()), f"{key}: some kept weights never changed"
    final = torch.load(results["pruned-50"]["state_dict"])
    assert "net.encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in final
