"""EmergenceCallback's epoch-end cost at 1,000 layers: the measurement computed and logged to the loggers.

1. The whole epoch end. A stack of ``--layers`` Linear(8, 8) + ReLU blocks (one layer per ReLU) trains
   ``--epochs`` epochs of one batch with one validation batch. Timing marks placed first and last among
   the callbacks time the callbacks' ``on_validation_epoch_end`` (where the callback computes E and logs
   the measurement). Each round fits once with no logger and once with a TensorBoard and a CSV logger,
   in alternating order; printed: medians over rounds (ms per epoch end, wall and process CPU) and the
   median ratio logged / not logged.
2. The logging alone, one record against the split of before (the per-layer counts in one
   ``log_metrics`` call, the scalars and ``epoch`` in another, as Lightning's logger connector wrote
   them), alternating, to the same TensorBoard and CSV loggers: medians and the median ratio.

    .venv/bin/python benchmarks/bench_epoch_end_logging.py [--rounds 7] [--layers 1000]

Run with ``PYTHONPATH`` at another checkout to time that version's code the same way.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from bench_models import FirstMarks, LastMarks, Marks, load, span
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning import EmergenceCallback
from emergence_lightning.callbacks.emergence_metrics import layer_metrics, measurement_row, scalar_metrics


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


def epoch_end_seconds(
    layers: int, epochs: int, logged: bool, root: str, marks: tuple[FirstMarks, LastMarks] | None = None
) -> tuple[float, float]:
    """Median (wall, CPU) seconds of the callbacks' ``on_validation_epoch_end`` over one fit's epochs.

    ``marks``: the first and last timing callbacks (default: plain ``FirstMarks``, ``LastMarks``).
    """
    data = TensorDataset(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2)
    loader = DataLoader(data, batch_size=8)
    first, last = marks or (FirstMarks(), LastMarks())
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
        span(_only(first, i), _only(last, i), "validation_end", "validation_end")
        for i in range(len(first.times["validation_end"]))
    ]
    return statistics.median(e[0] for e in ends), statistics.median(e[1] for e in ends)


def logging_seconds(layers: int, split: bool, loggers: list, step: int) -> tuple[float, float]:
    """(wall, CPU) seconds to log one measurement of ``layers`` layers: one record, or split in two calls."""
    record = {
        "epoch": 1, "step": step, "layers": [f"net.{2 * i + 1}" for i in range(layers)], "n": [8] * layers,
        "a": [4] * layers, "E": 10**300, "relative": 1.5, "log10_E": 300.0, "active_fraction": 0.5,
    }  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    calls = (
        [layer_metrics(record, "emergence"), {**scalar_metrics(record, "emergence"), "epoch": 0}]
        if split
        else [measurement_row(record, "emergence", epoch=0)]
    )
    for metrics in calls:
        for logger in loggers:
            logger.log_metrics(metrics, step=step)
    return time.perf_counter() - wall, time.process_time() - cpu


def _only(marks, index):  # type: ignore[no-untyped-def]
    """``marks`` with the ``index``-th epoch-end mark only."""
    single = Marks()
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
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    ratios: list[tuple[float, float]] = []
    logging_results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    logging_ratios: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as root:
        for index in range(args.rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            pair = {logged: epoch_end_seconds(args.layers, args.epochs, logged, root) for logged in order}
            for logged, seconds in pair.items():
                results[logged].append(seconds)
            ratios.append((pair[True][0] / pair[False][0], pair[True][1] / pair[False][1]))
        loggers = [TensorBoardLogger(root, name="tb-alone"), CSVLogger(root, name="csv-alone")]
        for index in range(5 * args.rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            pair = {split: logging_seconds(args.layers, split, loggers, step=index) for split in order}
            for split, seconds in pair.items():
                logging_results[split].append(seconds)
            logging_ratios.append((pair[False][0] / pair[True][0], pair[False][1] / pair[True][1]))
        for logger in loggers:
            logger.finalize("success")
    print(f"{args.layers} layers, {args.rounds} rounds, {args.epochs} epochs a fit; {load()}")
    print("  1. the callbacks' epoch end (E computed and logged), medians [wall / CPU]:")
    print(f"     no logger: {_ms(results[False])}; TensorBoard + CSV: {_ms(results[True])}")
    print(f"     ratio logged / not logged: {_ratio(ratios)}")
    print(
        f"  2. logging one measurement to TensorBoard + CSV, {5 * args.rounds} pairs, medians [wall / CPU]:"
    )
    print(f"     one record: {_ms(logging_results[False])}; split in two calls: {_ms(logging_results[True])}")
    print(f"     ratio one record / split: {_ratio(logging_ratios)}")


def _ms(pairs: list[tuple[float, float]]) -> str:
    return " / ".join(f"{1000 * statistics.median(p[clock] for p in pairs):.1f} ms" for clock in (0, 1))


def _ratio(pairs: list[tuple[float, float]]) -> str:
    cells = []
    for clock in (0, 1):
        values = [p[clock] for p in pairs]
        cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    return " / ".join(cells)


if __name__ == "__main__":
    main()
