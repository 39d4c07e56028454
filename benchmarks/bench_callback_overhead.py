"""Overhead of EmergenceCallback on fit time, measured side by side in one process.

Fits the same MLP on Fashion-MNIST-sized data (60,000 training and 10,000 validation samples of
784 features) with and without the callback, alternating, and prints the median ratio.

    .venv/bin/python benchmarks/bench_callback_overhead.py --pairs 7 --epochs 5 [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                 nn.Linear(128, 10))  # fmt: skip

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.005)


def fit_seconds(with_callback: bool, train: DataLoader, val: DataLoader, epochs: int, **callback_kwargs) -> float:
    torch.manual_seed(0)
    model = MLP()
    callbacks = [EmergenceCallback(**callback_kwargs)] if with_callback else []
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, train, val)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 resists a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.rand(60_000, 784, generator=generator), torch.randint(0, 10, (60_000,), generator=generator))
    val = TensorDataset(torch.rand(10_000, 784, generator=generator), torch.randint(0, 10, (10_000,), generator=generator))
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val, batch_size=256)
    fit_seconds(False, train_loader, val_loader, 1)  # warm-up

    for label, kwargs in [("with the epoch-0 measurement", {}), ("without it", {"measure_at_start": False})]:
        ratios, base_times, callback_times = [], [], []
        for _ in range(args.pairs):
            base = fit_seconds(False, train_loader, val_loader, args.epochs)
            with_cb = fit_seconds(True, train_loader, val_loader, args.epochs, **kwargs)
            base_times.append(base)
            callback_times.append(with_cb)
            ratios.append(with_cb / base)
        print(
            f"EmergenceCallback ({label}), {args.epochs} epochs, {args.pairs} pairs: "
            f"median fit {statistics.median(base_times):.2f} s without, {statistics.median(callback_times):.2f} s with; "
            f"median ratio {statistics.median(ratios):.4f} (overhead {100 * (statistics.median(ratios) - 1):+.2f}%)"
        )


if __name__ == "__main__":
    main()
