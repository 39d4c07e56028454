"""Fits a tiny model with EmergenceCallback on N CPU processes and writes rank zero's history.

Run by tests/callbacks/test_distributed.py as a real script, because Lightning's DDP launcher starts the
other processes by running this file again.

    python ddp_emergence.py --devices 2 --out history.json [--val-samples 37] [--stop-at-zero]
    python ddp_emergence.py --devices 2 --out history.json --train-samples 37 --no-validation
"""

import argparse
import json
import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from tiny_models import Classifier, loaders, mlp  # noqa: E402

from emergence_lightning import EmergenceCallback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--val-samples", type=int, default=37)
    parser.add_argument("--train-samples", type=int, default=64)
    parser.add_argument("--no-validation", action="store_true", help="measure on the training passes")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--statistic", default="mean")
    parser.add_argument("--dead", action="store_true", help="kill every node so E = 0 (stop-at-zero)")
    parser.add_argument("--log-dir", default=None, help="also log to TensorBoard under this directory")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = mlp(hidden=(16, 12))
    with torch.no_grad():
        net[0].bias[:5] = -3.0  # some dead nodes so E > 0
        if args.dead:
            net[0].bias.fill_(-100.0)
            net[2].bias.fill_(-100.0)
    model = Classifier(net, lr=0.0)  # weights fixed: every run sees the same network
    train, val = loaders(samples=args.train_samples, val_samples=args.val_samples, batch_size=8)
    callback = EmergenceCallback(statistic=args.statistic, stop_at_zero=args.dead)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[callback],
        logger=TensorBoardLogger(args.log_dir, name="", version="") if args.log_dir else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train, None if args.no_validation else val)
    if trainer.global_rank == 0:
        records = [
            {key: record[key] for key in ("epoch", "n", "a", "E", "relative", "samples")}
            for record in callback.history
        ]
        with open(args.out, "w") as handle:
            json.dump(
                {"history": records, "world_size": trainer.world_size, "epochs_run": trainer.current_epoch},
                handle,
            )


if __name__ == "__main__":
    main()
