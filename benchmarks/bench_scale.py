"""Scale figures (issue 19, item 5): E at 10,000 layers, and EmergenceCallback's epoch end at 1,000 layers.

1. The pure formula on ``--layers`` layers (default 10,000) of seeded, realistic counts: widths drawn
   from 64-4096 nodes, each layer 0-100 % active. Timed on their own, ``--repeats`` times each:
   ``functional.emergence`` with ``variant="paper"`` and ``"induced"``, ``relative_emergence`` and
   ``log10_emergence`` of the paper's E, and the three together (what a measurement computes).
   Target: E at 10,000 layers < 100 ms.
2. The callbacks' ``on_validation_epoch_end`` of a real fit of ``--epoch-layers`` (default 1,000)
   Linear(8, 8) + ReLU blocks (``bench_epoch_end_logging.py`` part 1, imported: the same model, data and
   timing marks), with no logger and with a TensorBoard and a CSV logger, in alternating order per round.
   Target: <= 50 ms of CPU time with no logger (the wall time on a shared machine includes waiting for a
   core; the CPU time is the callback's own work).

Printed: medians of wall and process CPU time, the load average, and each figure against its target.
``--profile`` adds a cProfile of the no-logger epoch ends (the callbacks' hooks only), top functions by
cumulative time.

    cd benchmarks && PYTHONPATH=.. ../.venv/bin/python bench_scale.py [--repeats 9] [--rounds 5]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from bench_epoch_end_logging import epoch_end_seconds
from bench_models import FirstMarks, LastMarks, load

from emergence_lightning.functional import emergence, log10_emergence, relative_emergence

WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)
E_TARGET_MS = 100.0  # E at 10,000 layers
EPOCH_END_TARGET_MS = 50.0  # the callback's epoch end at 1,000 layers, CPU time, no logger


def counts(layers: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded node counts (one of WIDTHS per layer) and active counts (0-100 % of each layer)."""
    draw = random.Random(seed)
    n = [draw.choice(WIDTHS) for _ in range(layers)]
    return n, [draw.randint(0, width) for width in n]


def timed(work: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``repeats`` calls of ``work``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def formula_figures(layers: int, repeats: int, parameters: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each pure function on ``layers`` layers of realistic counts."""
    n, a = counts(layers)
    E = emergence(n, a)

    def whole() -> None:  # what one measurement computes of E
        exact = emergence(n, a)
        relative_emergence(exact, parameters)
        log10_emergence(exact)

    return {
        'emergence(variant="paper")': timed(lambda: emergence(n, a), repeats),
        'emergence(variant="induced")': timed(lambda: emergence(n, a, variant="induced"), repeats),
        "relative_emergence(E, P)": timed(lambda: relative_emergence(E, parameters), repeats),
        "log10_emergence(E)": timed(lambda: log10_emergence(E), repeats),
        "all three (paper E)": timed(whole, repeats),
    }


class ProfiledFirstMarks(FirstMarks):
    """The first timing mark, which also starts the profiler at the epoch end."""

    def __init__(self, profiler: cProfile.Profile) -> None:
        super().__init__()
        self.profiler = profiler

    def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        super().on_validation_epoch_end(trainer, pl_module)
        self.profiler.enable()


class ProfiledLastMarks(LastMarks):
    """The last timing mark, which stops the profiler: between the two, only the callbacks' epoch ends."""

    def __init__(self, profiler: cProfile.Profile) -> None:
        super().__init__()
        self.profiler = profiler

    def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self.profiler.disable()
        super().on_validation_epoch_end(trainer, pl_module)


def profile_epoch_end(layers: int, epochs: int, root: str, top: int) -> str:
    """cProfile of the callbacks' ``on_validation_epoch_end`` over one fit with no logger."""
    profiler = cProfile.Profile()
    marks = (ProfiledFirstMarks(profiler), ProfiledLastMarks(profiler))
    epoch_end_seconds(layers, epochs, logged=False, root=root, marks=marks)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=10_000, help="layers of the pure formula's figures")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls of each pure function")
    parser.add_argument("--epoch-layers", type=int, default=1000, help="Linear + ReLU blocks of the fit")
    parser.add_argument("--rounds", type=int, default=5, help="fits of each kind (no logger, logged)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (epoch ends timed) per fit")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="also profile, print TOP rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    print(f"1. E at {args.layers:,} layers (widths {WIDTHS[0]}-{WIDTHS[-1]}, 0-100 % active); {load()}")
    n, a = counts(args.layers)
    E = emergence(n, a)
    print(f"   E = ...{E % 10**12:012d} (exact), log10(E + 1) = {log10_emergence(E):,.1f}")
    print(f"   medians of {args.repeats} calls [wall / CPU]:")
    figures = formula_figures(args.layers, args.repeats, parameters=10**9)
    for name, seconds in figures.items():
        print(f"   {name:30s} {_ms(seconds)}")
    paper = figures["all three (paper E)"][1] * 1000
    print(
        f"   target < {E_TARGET_MS:.0f} ms (CPU, all three): {paper:.1f} ms, {_verdict(paper < E_TARGET_MS)}"
    )

    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as root:
        for index in range(args.rounds):
            for logged in (False, True) if index % 2 == 0 else (True, False):
                results[logged].append(epoch_end_seconds(args.epoch_layers, args.epochs, logged, root))
        profile = (
            profile_epoch_end(args.epoch_layers, args.epochs, root, args.profile) if args.profile else ""
        )
    print(
        f"2. the callbacks' epoch end at {args.epoch_layers:,} layers, {args.rounds} fits of {args.epochs} "
        f"epochs each kind; {load()}"
    )
    print("   medians over fits of each fit's median epoch end [wall / CPU]:")
    print(f"   no logger:          {_ms(_medians(results[False]))}")
    print(f"   TensorBoard + CSV:  {_ms(_medians(results[True]))}")
    cpu = _medians(results[False])[1] * 1000
    print(
        f"   target <= {EPOCH_END_TARGET_MS:.0f} ms (CPU, no logger): {cpu:.1f} ms, "
        f"{_verdict(cpu <= EPOCH_END_TARGET_MS)}"
    )
    if profile:
        print(f"3. cProfile of the no-logger epoch ends (one fit, {args.epochs} epoch ends):\n{profile}")


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def _ms(seconds: tuple[float, float]) -> str:
    return f"{1000 * seconds[0]:8.2f} ms / {1000 * seconds[1]:8.2f} ms"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    main()
