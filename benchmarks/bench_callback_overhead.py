"""Overhead of EmergenceCallback on a whole Trainer fit, measured side by side in one process.

Per model (the 6-block conv net, torchvision ResNet-18 at 32x32, a small nn.TransformerEncoder;
see bench_models.py), rounds of three fits with a validation loop: without the callback, with it
at defaults (one validation-sized epoch-0 pass before training), and with
``measure_at_start=False``. The order rotates each round; one torch thread. Timing marks placed
first and last among the callbacks split each fit into:

- the whole fit (the overhead ratio; the target is <= 1.02 besides the epoch-0 pass),
- the training steps (on_train_batch_start .. on_train_batch_end, the callback attached but no
  window open: the ratio must be 1.00 +- noise),
- the validation runs (the measurement window is open: the cost of measuring),
- the epoch-0 pass (the callback's on_train_start), reported apart.

Ratios are medians over the rounds of (with / without) in the same round, by wall clock and by
process CPU time (which resists other processes on a shared machine).

    .venv/bin/python benchmarks/bench_callback_overhead.py [--rounds 5] [--models convnet resnet18 transformer]
    .venv/bin/python benchmarks/bench_callback_overhead.py --full   # the issue's sizes (slow on a CPU)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from bench_models import (
    FIT_SIZES,
    MODELS,
    TINY,
    WINDOW_SIZES,
    Classifier,
    FirstMarks,
    LastMarks,
    build,
    load,
    loaders,
    span,
)

from emergence_lightning import EmergenceCallback

# (training samples, validation samples): 4:1 as the 20k / 5k, sized for about 8 s a fit here.
FIT_DATA = {"convnet": (2560, 640), "resnet18": (1024, 256), "transformer": (4096, 1024)}
FULL_DATA = (20_000, 5_000)
CASES = ("without", "default", "no_epoch0")


@dataclass
class Fit:
    """One fit's (wall, cpu) seconds: whole fit, training steps, validation runs, epoch-0 pass."""

    fit: tuple[float, float]
    steps: tuple[float, float]
    validation: tuple[float, float]
    start: tuple[float, float]
    records: int


def fit_once(  # type: ignore[no-untyped-def]
    name: str, size, data: tuple[int, int], epochs: int, case: str, accelerator: str = "cpu"
) -> Fit:
    """One fit; on a GPU the clock stops once its queued kernels are done (the spans then time
    only the launches: read the whole fit).
    """
    train, val = loaders(name, size, *data)
    first, last = FirstMarks(), LastMarks()
    emergence = [] if case == "without" else [EmergenceCallback(measure_at_start=case == "default")]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[first, *emergence, last],
    )
    model = Classifier(build(name, size))
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, train, val)
    if accelerator == "gpu":
        torch.cuda.synchronize()
    whole = (time.perf_counter() - wall, time.process_time() - cpu)
    return Fit(
        fit=whole,
        steps=span(first, last, "train_batch_start", "train_batch_end"),
        validation=span(first, last, "validation_start", "validation_end"),
        start=span(first, last, "train_start", "train_start"),
        records=len(emergence[0].history) if emergence else 0,
    )


def ratio(rounds: list[dict[str, Fit]], case: str, part: str, clock: int) -> tuple[float, float, float]:
    """Median, min and max over the rounds of case / without, for one part of the fit."""
    values = [getattr(r[case], part)[clock] / getattr(r["without"], part)[clock] for r in rounds]
    return statistics.median(values), min(values), max(values)


def report(name: str, rounds: list[dict[str, Fit]], epochs: int, data: tuple[int, int]) -> None:
    base = statistics.median(r["without"].fit[0] for r in rounds)
    print(
        f"{name}: {epochs} epochs, {data[0]} train / {data[1]} val samples, {len(rounds)} rounds; median fit "
        f"without the callback {base:.2f} s; measurements per fit: default "
        f"{rounds[0]['default'].records}, measure_at_start=False {rounds[0]['no_epoch0'].records}; {load()}"
    )
    rows = [
        ("whole fit, defaults (with the epoch-0 pass)", "default", "fit"),
        ("whole fit, measure_at_start=False [target <= 1.02]", "no_epoch0", "fit"),
        ("training steps, no window open [target 1.00 +- noise]", "no_epoch0", "steps"),
        ("validation runs, window open", "no_epoch0", "validation"),
    ]
    for label, case, part in rows:
        cells = []
        for clock, clock_name in ((0, "wall"), (1, "cpu")):
            median, low, high = ratio(rounds, case, part, clock)
            cells.append(f"{clock_name} {median:.4f} ({low:.3f}-{high:.3f})")
        print(f"  {label}: median ratio {'; '.join(cells)}")
    start = statistics.median(r["default"].start[0] for r in rounds)
    share = statistics.median(r["default"].start[0] / r["without"].fit[0] for r in rounds)
    validation = statistics.median(r["without"].validation[0] for r in rounds)
    print(
        f"  epoch-0 pass (reported apart): median {start:.3f} s = {100 * share:.2f} % of the fit without the "
        f"callback (one validation run without the callback takes {validation / epochs:.3f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three fits (>= 5)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: resists a busy machine)"
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_true", help="the issue's sizes: 20k/5k samples, widths 64-256")
    sizes.add_argument("--tiny", action="store_true", help="tiny models and data (a smoke test, no figure)")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error(f"`--rounds` must be >= 5 for a median, got {args.rounds}.")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no "GPU available" lines per fit
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec).*")
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, {args.threads} thread(s); {load()}",
        flush=True,
    )
    for name in args.models:
        if args.tiny:
            size, data = TINY, (16, 8)
        elif args.full:
            size, data = WINDOW_SIZES[name], FULL_DATA
        else:
            size, data = FIT_SIZES[name], FIT_DATA[name]
        for case in CASES:  # warm-up: allocator, kernels, imports
            fit_once(name, size, (2 * size.batch, size.batch), 1, case)
        rounds = []
        for index in range(args.rounds):
            order = CASES[index % 3 :] + CASES[: index % 3]
            rounds.append({case: fit_once(name, size, data, args.epochs, case) for case in order})
        report(name, rounds, args.epochs, data)


if __name__ == "__main__":
    main()
