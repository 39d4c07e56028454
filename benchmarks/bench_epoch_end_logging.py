"""EmergenceCallback's epoch-end cost at 1,000 layers: the measurement computed and logged to the loggers.

A stack of ``--layers`` Linear(8, 8) + ReLU blocks (one layer per ReLU) trains ``--epochs`` epochs of
one batch with one validation batch. Timing marks placed first and last among the callbacks time the
callbacks' ``on_validation_epoch_end`` (where the callback computes E and logs the measurement). Each
round fits once with no logger and once with a TensorBoard and a CSV logger, in alternating order, in
one process; printed: the medians over rounds (ms per epoch end) and the median ratio logged / not logged.

    .venv/bin/python benchmarks/bench_epoch_end_logging.py [--rounds 7] [--layers 1000]

Run with ``PYTHONPATH`` at another checkout to time that version's code the same way.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings

import lightning.pytorch as pl
import torch
from bench_models import FirstMarks, LastMarks, load, span
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback


class Deep(pl.LightningModule):
    """``layers`` blocks of Linear(8, 8) + ReLU, then a Linear to 2 classes."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *[m for _ in range(layers) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 2)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the weights stay: every epoch measures the same


def epoch_end_seconds(layers: int, epochs: int, logged: bool, root: str) -> float:
    """Median wall seconds of the callbacks' ``on_validation_epoch_end`` over one fit's epochs."""
    data = TensorDataset(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2)
    loader = DataLoader(data, batch_size=8)
    first, last = FirstMarks(), LastMarks()
    loggers = [TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")] if logged else False
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=loggers,
        callbacks=[first, EmergenceCallback(measure_at_start=False), last],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Deep(layers), loader, loader)
    ends = [
        span(_only(first, i), _only(last, i), "validation_end", "validation_end")[0]
        for i in range(len(first.times["validation_end"]))
    ]
    return statistics.median(ends)


def _only(marks, index):  # type: ignore[no-untyped-def]
    """``marks`` with the ``index``-th epoch-end mark only."""
    single = type(marks)()
    single.times = {"validation_end": [marks.times["validation_end"][index]]}
    return single


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    results: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    with tempfile.TemporaryDirectory() as root:
        for index in range(args.rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            pair = {logged: epoch_end_seconds(args.layers, args.epochs, logged, root) for logged in order}
            for logged, seconds in pair.items():
                results[logged].append(seconds)
            ratios.append(pair[True] / pair[False])
    without, with_loggers = (1000 * statistics.median(results[key]) for key in (False, True))
    print(
        f"{args.layers} layers, {args.rounds} rounds, {args.epochs} epochs a fit; {load()}\n"
        f"  epoch end, no logger: median {without:.1f} ms\n"
        f"  epoch end, TensorBoard + CSV: median {with_loggers:.1f} ms "
        f"(logging one record: {with_loggers - without:.1f} ms)\n"
        f"  ratio logged / not logged: median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
