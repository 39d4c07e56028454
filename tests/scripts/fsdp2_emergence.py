"""Fits a small conv net with EmergenceCallback under FSDP2 on N CPU processes, or eagerly on one.

Run by tests/callbacks/test_fsdp2.py as a real script, because Lightning's launcher starts the other
processes by running this file again. With ``--fsdp2`` the LightningModule's ``configure_model``
applies ``fully_shard`` to its conv block (a conv and a ReLU inside the sharded block) and to the
root, under Lightning's ``ModelParallelStrategy`` (gloo). The conv's weight carries a
``torch.nn.utils.prune`` mask from the start, so ``count_parameters`` reads DTensor parameters
with a pruning mask.

    python fsdp2_emergence.py --devices 2 --fsdp2 --out history.json
"""

import argparse
import json
import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tiny_models import loaders  # noqa: E402

from emergence_lightning import EmergenceCallback, count_parameters  # noqa: E402


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU()),  # the block fully_shard wraps
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 12),
        nn.Tanh(),
        nn.Linear(12, 3),
    )
    with torch.no_grad():
        net[0][0].bias[:2] = -3.0  # some dead channels, so E > 0
    mask = torch.ones_like(net[0][0].weight)
    mask[0] = 0  # channel 0's filter pruned away: 9 weights held at zero
    prune.custom_from_mask(net[0][0], "weight", mask)
    return net


class ConvClassifier(pl.LightningModule):
    def __init__(self, shard: bool) -> None:
        super().__init__()
        self.net = conv_net()
        self.shard = shard
        self.parameter_counts: list[int] = []

    def configure_model(self) -> None:
        if not self.shard:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        fully_shard(self.net[0], mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.parameter_counts.append(count_parameters(self))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # weights fixed: every run sees one network


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--fsdp2", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    model = ConvClassifier(shard=args.fsdp2)
    train, val = loaders(samples=32, val_samples=37, batch_size=8, features=64, image=True)
    callback = EmergenceCallback()
    strategy = (
        ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
        if args.fsdp2
        else "auto"
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    if trainer.global_rank == 0:
        keys = ("epoch", "layers", "n", "a", "E", "relative", "samples")
        weight = model.net[0][0].weight_orig
        result = {
            "history": [{key: record[key] for key in keys} for record in callback.history],
            "world_size": trainer.world_size,
            "parameter_counts": model.parameter_counts,
            "weight_type": type(weight).__name__,
            "weight_local_numel": (weight.to_local() if hasattr(weight, "to_local") else weight).numel(),
        }
        with open(args.out, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
