"""The measurement window's per-call cost where Python dominates (issue 19, item 4), side by side.

Cases, each timed as alternating pairs in one process (the order rotates), medians printed with
their range and the machine's load, by CPU time and wall clock:

- Hugging Face GPT-2 (12 layers x 256) and Llama (8 layers x 256) from tiny configs, batch 1 x 16
  tokens: an eval pass with the window closed vs open (target open/closed <= 1.10x);
- a 300-layer ReLU chain (Linear 512 -> ReLU, batch 32): the added time per activation call,
  (open - closed) / (passes x 300) (target <= 25 us);
- the 6-block conv net of bench_models at its window size (target <= 1.05x); with
  ``--statistics``, every statistic for the conv net and GPT-2 (target <= 1.10x). The default is
  the default statistic (``mean_abs``).

With ``--split``, the chain's added time per activation call and GPT-2's per pass are split into
their parts, each timed against the closed pass in the same rotation: hooks that do nothing on
the modules the window hooks (what torch's hook path costs by itself), the tracker with its
layers' reduction steps doing nothing (hooks, bookkeeping and the window's fixed work), and the
whole tracker (the difference is the reductions' tensor operations).

A window holds ``--passes`` forward passes (default 8: a validation run holds many). A module's
first call runs fully hooked and intercepted, to learn what its own code does; that is kept
while the module tree is unchanged, so later windows hook only the modules that matter (the
warm-up window learns; ``--passes 1`` shows windows of one pass). At the end: whether any hook
or torch function mode is left behind.

    .venv/bin/python benchmarks/bench_window_per_call.py [--pairs 9] [--passes 8] [--cases gpt2 llama chain convnet]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_measure_window import leftovers, paired
from bench_models import WINDOW_SIZES, build, inputs, load
from torch import nn

from emergence_lightning.measure import ActivityTracker
from emergence_lightning.measure.statistics import DEFAULT_STATISTIC, STATISTICS

CASES = ("gpt2", "llama", "chain", "convnet")
CHAIN_LAYERS, CHAIN_WIDTH, CHAIN_BATCH = 300, 512, 32


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=12, n_embd=256, n_head=4, vocab_size=1000, n_positions=64)
    return GPT2LMHeadModel(config)


def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=8,
        hidden_size=256,
        intermediate_size=688,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1000,
    )
    return LlamaForCausalLM(config)


def chain() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(CHAIN_LAYERS):
        layers += [nn.Linear(CHAIN_WIDTH, CHAIN_WIDTH), nn.ReLU()]
    return nn.Sequential(*layers)


def case(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name in ("gpt2", "llama"):
        model = gpt2() if name == "gpt2" else llama()
        return model.eval(), torch.randint(0, 1000, (1, 16))
    if name == "chain":
        return chain().eval(), torch.randn(CHAIN_BATCH, CHAIN_WIDTH)
    size = WINDOW_SIZES[name]
    return build(name, size).eval(), inputs(name, size, size.batch)


def window(
    model: nn.Module,
    x: torch.Tensor,
    passes: int,
    tracker: ActivityTracker | None,
    wait: Callable[[], None] = lambda: None,
) -> tuple[float, float]:
    """``passes`` eval forward passes, inside one window when a tracker is given (reset, attach,
    ``start_pass`` per pass, detach and ``compute`` included). Returns wall and CPU seconds, read
    after ``wait()`` (``torch.cuda.synchronize`` on a GPU).
    """
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if tracker is None:
            for _ in range(passes):
                model(x)
        else:
            tracker.reset()
            tracker.attach()
            try:
                for _ in range(passes):
                    tracker.start_pass()
                    model(x)
            finally:
                tracker.detach()
            tracker.compute()
    wait()
    return time.perf_counter() - start, time.process_time() - cpu


def summary(closed: list[tuple[float, float]], opened: list[tuple[float, float]]) -> str:
    parts = []
    for clock, index in (("cpu", 1), ("wall", 0)):
        ratios = [o[index] / c[index] for o, c in zip(opened, closed)]
        parts.append(
            f"{clock} {1000 * statistics.median(c[index] for c in closed):.2f} vs "
            f"{1000 * statistics.median(o[index] for o in opened):.2f} ms, ratio "
            f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    return "; ".join(parts)


def per_call_us(closed: list[tuple[float, float]], opened: list[tuple[float, float]], calls: int) -> str:
    parts = []
    for clock, index in (("cpu", 1), ("wall", 0)):
        added = [1e6 * (o[index] - c[index]) / calls for o, c in zip(opened, closed)]
        parts.append(f"{clock} {statistics.median(added):.1f} us ({min(added):.1f}-{max(added):.1f})")
    return "added per activation call: " + "; ".join(parts)


def hooked_modules(tracker: ActivityTracker) -> tuple[list[nn.Module], list[nn.Module]]:
    """The modules a window of ``tracker`` hooks in its later passes: fully (a pre- and a post-hook)
    and post-only (read from a window opened for the purpose).
    """
    tracker.reset()
    with torch.no_grad(), tracker:
        tracker.start_pass()
        modules = list(tracker.model.modules())
        full = [m for m in modules if m._forward_pre_hooks]
        post_only = [m for m in modules if m._forward_hooks and not m._forward_pre_hooks]
    tracker.reset()
    return full, post_only


def empty_hooks(
    model: nn.Module, x: torch.Tensor, passes: int, full: list[nn.Module], post_only: list[nn.Module]
) -> tuple[float, float]:
    """``passes`` closed passes with hooks that do nothing on the modules the window hooks: what
    torch's hook path costs by itself.
    """
    handles = [module.register_forward_pre_hook(lambda module, args: None) for module in full]
    handles += [
        module.register_forward_hook(lambda module, args, output: None) for module in (*full, *post_only)
    ]
    try:
        return window(model, x, passes, None)
    finally:
        for handle in handles:
            handle.remove()


def without_reduction(
    model: nn.Module, x: torch.Tensor, passes: int, tracker: ActivityTracker
) -> tuple[float, float]:
    """A window whose layers' reduction steps (built in earlier windows) do nothing: the hooks and
    the bookkeeping without the tensor operations.
    """
    steps = [step for stat in tracker._stats.values() for step in getattr(stat, "_steps", {}).values()]
    kept = [step.step for step in steps]
    for step in steps:
        step.step = lambda values: None
    try:
        return window(model, x, passes, tracker)
    finally:
        for step, function in zip(steps, kept):
            step.step = function


def split_case(name: str, pairs: int, passes: int) -> None:
    """A case's added time split into parts (CPU time, medians over rounds): per activation call for
    the chain, per forward pass otherwise.
    """
    model, x = case(name)
    tracker = ActivityTracker(model)
    window(model, x, passes, tracker)  # learns what the modules' code does
    full, post_only = hooked_modules(tracker)
    cases = {
        "closed": lambda: window(model, x, passes, None),
        "empty hooks on the modules the window hooks": lambda: empty_hooks(model, x, passes, full, post_only),
        "tracker, reductions doing nothing": lambda: without_reduction(model, x, passes, tracker),
        "tracker": lambda: window(model, x, passes, tracker),
    }
    times: dict[str, list[float]] = {part: [] for part in cases}
    for run in cases.values():  # warm-up
        run()
    parts_in_order = list(cases)
    for index in range(pairs):
        shift = index % len(parts_in_order)
        for part in parts_in_order[shift:] + parts_in_order[:shift]:
            times[part].append(cases[part]()[1])
    closed = statistics.median(times["closed"])
    calls, unit = (passes * CHAIN_LAYERS, "activation call") if name == "chain" else (passes, "pass")
    parts = [
        f"{part}: +{1e6 * (statistics.median(values) - closed) / calls:.1f} us"
        for part, values in times.items()
        if part != "closed"
    ]
    print(
        f"{name} split, added per {unit} (cpu; {len(full)} modules hooked fully, {len(post_only)} "
        f"post-only): {'; '.join(parts)}; {pairs} rounds; {load()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--passes", type=int, default=8, help="forward passes per window (default 8)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument(
        "--statistics",
        nargs="+",
        default=[DEFAULT_STATISTIC],
        choices=STATISTICS,
        help=f"per-node statistics to time (default: the default one, {DEFAULT_STATISTIC})",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--split", action="store_true", help="also split the chain's per-call cost into parts"
    )
    args = parser.parse_args()
    if args.pairs < 5:
        parser.error(f"`--pairs` must be >= 5 for a median, got {args.pairs}.")
    if args.passes < 1:
        parser.error(f"`--passes` must be >= 1, got {args.passes}.")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.passes} passes a window; {load()}",
        flush=True,
    )
    models = []
    for name in args.cases:
        model, x = case(name)
        models.append(model)
        for statistic in args.statistics:
            tracker = ActivityTracker(model, statistic=statistic)
            closed, opened = paired(
                lambda: window(model, x, args.passes, None),
                lambda: window(model, x, args.passes, tracker),
                args.pairs,
            )
            measured = tracker.compute()
            layers = len(measured.n) if measured else 0
            line = f"{name:<8} {statistic:<8} {layers:>3} layers, closed vs open: {summary(closed, opened)}"
            if name == "chain":
                line += f"; {per_call_us(closed, opened, args.passes * CHAIN_LAYERS)}"
            print(f"{line}; {args.pairs} pairs; {load()}", flush=True)
    if args.split:
        for name in ("chain", "gpt2"):
            split_case(name, args.pairs, args.passes)
    print(leftovers(models), flush=True)


if __name__ == "__main__":
    main()
