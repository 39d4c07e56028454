"""Cost of an eval pass with the measurement window open vs closed, side by side in one process.

For each model (the issue's 6-block conv net: conv + BatchNorm + ReLU, widths 64-256, 32x32
input; torchvision ResNet-18 at 32x32; ``nn.TransformerEncoder``, 4 layers, d=128, 64 tokens;
batch 128) and each statistic (mean, mean_abs, normalized_mean_abs, fraction, max), times a validation-like pass of
``--batches`` forward passes without gradients, once with the window closed and once with an
``ActivityTracker`` window open around it (reset, attach, ``start_pass`` per batch, detach and
``compute`` included, as the callback does per validation run). Pairs alternate which case runs
first; the median ratio of the pairs is printed with the machine's load.

Then, per model, the closed pass of the tracked model against a copy that was never tracked
(the interception must cost nothing outside a window), and whether any global hook or
``TorchFunctionMode`` is left behind.

    .venv/bin/python benchmarks/bench_measure_window.py [--pairs 7] [--models convnet resnet18 transformer]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Iterable

import torch
from bench_models import MODELS, TINY, WINDOW_SIZES, build, inputs, load
from torch import nn
from torch.nn.modules import module as module_hooks

from emergence_lightning.measure import ActivityTracker
from emergence_lightning.measure.statistics import STATISTICS


def pass_seconds(
    model: nn.Module, batches: list[torch.Tensor], tracker: ActivityTracker | None
) -> tuple[float, float]:
    """One eval pass over ``batches``; with a tracker, inside one measurement window. Returns the
    wall-clock and the process CPU seconds (the CPU time resists other processes on the machine).
    """
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if tracker is None:
            for x in batches:
                model(x)
        else:
            tracker.reset()
            tracker.attach()
            try:
                for x in batches:
                    tracker.start_pass()
                    model(x)
            finally:
                tracker.detach()
            tracker.compute()
    return time.perf_counter() - start, time.process_time() - cpu


def paired(first, second, pairs: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Times ``first()`` and ``second()`` ``pairs`` times, alternating which runs first."""
    a, b = [], []
    first(), second()  # warm-up
    for index in range(pairs):
        if index % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return a, b


def leftovers(models: Iterable[nn.Module] = ()) -> str:
    """What a window could leave behind: global hooks, hooks on the models' modules, torch function modes."""
    hooks = len(module_hooks._global_forward_hooks) + len(module_hooks._global_forward_pre_hooks)
    hooked = sum(
        bool(module._forward_hooks or module._forward_pre_hooks)
        for model in models
        for module in model.modules()
    )
    modes = len(torch.overrides._get_current_function_mode_stack())
    return f"global module hooks left {hooks}, modules with hooks left {hooked}, torch function modes left {modes}"


def ratio_line(
    label: str, base: list[tuple[float, float]], other: list[tuple[float, float]], pairs: int
) -> str:
    """Median times and median ratio of the pairs, by wall clock and by CPU time."""
    parts = []
    for clock, index in (("wall", 0), ("cpu", 1)):
        ratios = [o[index] / b[index] for o, b in zip(other, base)]
        parts.append(
            f"{clock} {1000 * statistics.median(b[index] for b in base):.1f} vs "
            f"{1000 * statistics.median(o[index] for o in other):.1f} ms, median ratio "
            f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    return f"{label}: {'; '.join(parts)}; {pairs} pairs; {load()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--batches", type=int, default=2, help="forward passes per window (default 2)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--statistics", nargs="+", choices=STATISTICS, default=list(STATISTICS))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: resists a busy machine)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models and batches (a smoke test, no figure)"
    )
    args = parser.parse_args()
    if args.pairs < 5:
        parser.error(f"`--pairs` must be >= 5 for a median, got {args.pairs}.")
    if args.batches < 1:
        parser.error(f"`--batches` must be >= 1, got {args.batches}.")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); {load()}", flush=True)
    for name in args.models:
        size = TINY if args.tiny else WINDOW_SIZES[name]
        model = build(name, size).eval()
        never_tracked = copy.deepcopy(model)
        batches = list(inputs(name, size, args.batches * size.batch).split(size.batch))
        for statistic in args.statistics:
            tracker = ActivityTracker(model, statistic=statistic)
            closed, opened = paired(
                lambda: pass_seconds(model, batches, None),
                lambda: pass_seconds(model, batches, tracker),
                args.pairs,
            )
            measurement = tracker.compute()
            layers = len(measurement.n) if measurement else 0
            label = f"{name:<11} {statistic:<8} {layers:>3} layers, window closed vs open"
            print(ratio_line(label, closed, opened, args.pairs), flush=True)
        untouched, tracked = paired(
            lambda: pass_seconds(never_tracked, batches, None),
            lambda: pass_seconds(model, batches, None),
            args.pairs,
        )
        label = f"{name:<11} outside windows: never-tracked copy vs tracked model"
        print(f"{ratio_line(label, untouched, tracked, args.pairs)}; {leftovers([model])}", flush=True)


if __name__ == "__main__":
    main()
