"""Where an open measurement window's time goes: the per-node reductions, and Python per call.

1. One ``NodeStatistic.add`` per statistic on a ReLU output of the issue's size, against the 3x3
   convolution that produces such an output; with ``--baseline FILE``, the same calls of another
   version of ``statistics.py`` interleaved (e.g. the version before a change:
   ``git show 8e088c2:emergence_lightning/measure/statistics.py > /tmp/old_statistics.py``).
2. The fixed cost of a window per forward pass: each model with tiny inputs (1 sample, 8x8 or 2
   tokens), so the arithmetic is negligible and what remains is hooks, interception and
   bookkeeping; CPU time, closed and open passes (per statistics.py version) interleaved.

    .venv/bin/python benchmarks/bench_reductions.py [--baseline /tmp/old_statistics.py] [--rounds 25]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from contextlib import contextmanager
from types import ModuleType

import torch
from bench_models import MODELS, Size, build, load

from emergence_lightning.measure import ActivityTracker
from emergence_lightning.measure import statistics as current
from emergence_lightning.measure import tracker as tracker_module

STATISTICS = current.STATISTICS


def module_from(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_statistics", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"`--baseline` must be a Python file, got {path!r}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reductions(versions: dict[str, ModuleType], rounds: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.relu(torch.randn(*shape))
    conv = torch.nn.Conv2d(shape[1], shape[1], 3, padding=1, bias=False)
    with torch.no_grad():
        conv(x)
        times = []
        for _ in range(5):
            start = time.process_time()
            conv(x)
            times.append(time.process_time() - start)
    print(f"{shape}: the 3x3 conv producing it {1000 * statistics.median(times):.1f} ms; {load()}")
    for statistic in STATISTICS:
        having = {name: module for name, module in versions.items() if statistic in module.STATISTICS}
        taken: dict[str, list[float]] = {name: [] for name in having}
        scratches = {name: module.Scratch() for name, module in having.items()}
        for _ in range(rounds):
            for name, module in having.items():
                node_statistic = module.NodeStatistic(statistic, 0.05)
                start = time.process_time()
                node_statistic.add(x, 0, 1, scratches[name])
                taken[name].append(time.process_time() - start)
        cells = ", ".join(f"{name} {1000 * statistics.median(v):.2f} ms" for name, v in taken.items())
        print(f"  add(), statistic={statistic!r}: {cells} (median of {rounds})", flush=True)


@contextmanager
def using(version: ModuleType):  # type: ignore[no-untyped-def]
    """The tracker builds its scratch and per-layer statistics from ``version`` of statistics.py
    (a layer's statistic is made when the layer is first seen: warm the tracker up inside).
    """
    names = ("NodeStatistic", "Scratch")
    kept = {name: getattr(tracker_module, name) for name in names}
    for name in names:
        setattr(tracker_module, name, getattr(version, name))
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(tracker_module, name, value)


def fixed_cost(versions: dict[str, ModuleType], rounds: int) -> None:
    print(f"fixed cost of an open window per forward pass, tiny inputs, CPU time; {load()}")
    for name in MODELS:
        size = Size(widths=(1,) * 6, d=8, layers=4, tokens=2, batch=1)
        model = build(name, size).eval()
        x = torch.randint(0, 1000, (1, 2)) if name == "transformer" else torch.randn(1, 3, 8, 8)
        trackers: dict[str, ActivityTracker | None] = {"closed": None}

        def run(tracker: ActivityTracker | None, reps: int = 50) -> float:
            start = time.process_time()
            with torch.no_grad():
                if tracker is not None:
                    tracker.reset()
                    tracker.attach()
                for _ in range(reps):
                    if tracker is not None:
                        tracker.start_pass()
                    model(x)
                if tracker is not None:
                    tracker.detach()
            return (time.process_time() - start) / reps

        run(None)  # warm-up
        for version, module in versions.items():
            with using(module):
                trackers[version] = ActivityTracker(model)
                run(trackers[version])  # warm-up; makes the per-layer statistics
        taken: dict[str, list[float]] = {case: [] for case in trackers}
        for _ in range(max(5, rounds // 2)):
            for case, tracker in trackers.items():
                taken[case].append(run(tracker))
        base = statistics.median(taken["closed"])
        extra = ", ".join(
            f"{case} {1e6 * (statistics.median(v) - base):.0f} us"
            for case, v in taken.items()
            if case != "closed"
        )
        print(
            f"  {name:<11} closed {1e6 * base:6.0f} us per forward pass; an open window adds: {extra}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", help="another statistics.py to time beside the current one")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    versions = {"current": current}
    if args.baseline:
        versions = {"baseline": module_from(args.baseline), **versions}
    for shape in ((128, 64, 32, 32), (128, 256, 8, 8), (128, 256, 2, 2)):
        reductions(versions, args.rounds, shape)
    fixed_cost(versions, args.rounds)


if __name__ == "__main__":
    main()
