"""The ``rank`` command and the ``reproduce predictor`` experiment of ``emergence-lightning``.

Registered in :mod:`emergence_lightning.paper.cli`; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPACE_NAMES = ("study", "quick", "paper")
SCORE_NAMES = ("E", "relative", "log10_E", "naswot", "synflow", "params")

RANK_EXAMPLES = """examples:
  emergence-lightning rank --space paper
  emergence-lightning rank --space quick --by naswot --top 10
  emergence-lightning rank --factory my_models:candidates --dataset fashion-mnist

Scores are computed on untrained models (seeded): E, E~ = E/#params and log10(E+1) from the
tracker on --batches validation batches; NASWOT on the first 128 images; synflow with an
all-ones input. A factory is `module:function`, the function returning {name: model} or a list."""

PREDICTOR_HELP = """predictor (the study of docs/predictor.md) reads only: --dataset (fashion-mnist;
--quick: mnist5k), --data-dir, --log-dir, --seeds (default 2 for predictor), --threshold,
--threads, --quick, --space, --budget-epochs, --stop-epochs, --train-size, --resamples,
--deadline-minutes. Its runs are cached under <log-dir>/predictor/<dataset>/runs: rerun to resume."""


def add_rank_command(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Adds ``rank`` through the CLI's ``command(name, help, epilog)`` helper."""
    rank = command("rank", "score candidate architectures at initialisation, without training", RANK_EXAMPLES)
    source = rank.add_mutually_exclusive_group()
    source.add_argument(
        "--space", choices=SPACE_NAMES, default="quick", help="a named search space: %(choices)s"
    )
    source.add_argument(
        "--factory", default=None, help="candidates from `module:function` (default: none, use --space)"
    )
    rank.add_argument(
        "--dataset", default="mnist5k", choices=("mnist5k", "fashion-mnist"), help="input images"
    )
    rank.add_argument(
        "--data-dir", default="data", help="fashion-mnist: torchvision's layout (made from Debian's)"
    )
    rank.add_argument(
        "--by", default="log10_E", choices=SCORE_NAMES, help="the score to rank by (higher first)"
    )
    rank.add_argument("--batches", type=int, default=4, help="validation batches E is measured on")
    rank.add_argument("--batch-size", type=int, default=256, help="images per batch")
    rank.add_argument("--threshold", type=float, default=0.05, help="activity threshold θ, as in the paper")
    rank.add_argument("--seed", type=int, default=0, help="torch seed before each model is built and scored")
    rank.add_argument("--top", type=int, default=0, help="show only the best N (0: all)")
    rank.add_argument("--csv", default=None, help="also write the table to this CSV file (default: none)")
    rank.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def add_predictor_arguments(reproduce: argparse.ArgumentParser) -> None:
    """The ``reproduce predictor`` options (other experiments ignore them)."""
    group = reproduce.add_argument_group("predictor", PREDICTOR_HELP)
    group.add_argument("--quick", action="store_true", help="MNIST 5k, the 21-architecture space, 2+8 epochs")
    group.add_argument(
        "--space", choices=("study", "quick"), default=None, help="default: study (--quick: quick)"
    )
    group.add_argument(
        "--budget-epochs", type=int, default=None, help="fixed budget (default: 3; --quick: 2)"
    )
    group.add_argument(
        "--stop-epochs",
        type=int,
        default=None,
        help="longer budget for the stopping rules (default: 10; --quick: 8)",
    )
    group.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training images per run (default: 10000; --quick: all 4000)",
    )
    group.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals"
    )
    group.add_argument(
        "--deadline-minutes",
        type=float,
        default=None,
        help="start no new run after this long (default: no limit)",
    )


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def run_rank(args: argparse.Namespace) -> int:
    """``emergence-lightning rank``: prints candidates best first by ``--by``."""
    for name in ("batches", "batch_size", "threads"):
        if getattr(args, name) < 1:
            return _error(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(args, name)}.")
    import torch

    from emergence_lightning.paper.predictor.space import factory_candidates, named_space
    from emergence_lightning.paper.predictor.study_data import load_study_data
    from emergence_lightning.predictor.score import proxy_scores

    torch.set_num_threads(args.threads)
    try:
        data = load_study_data(args.dataset, args.data_dir)
        if args.factory:
            candidates = factory_candidates(args.factory)
        else:
            candidates = named_space(args.space, data.input_shape, data.num_classes)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as error:
        return _error(str(error))
    images = data.x_val[: args.batches * args.batch_size]
    batches = list(images.split(args.batch_size))
    rows: list[dict[str, Any]] = []
    for candidate in candidates:
        torch.manual_seed(args.seed)
        model = candidate.build()
        start = time.perf_counter()
        try:
            scores = proxy_scores(model, batches, data.input_shape, args.threshold)
        except (ValueError, TypeError, RuntimeError) as error:
            return _error(f"candidate {candidate.name!r}: {error}")
        rows.append({"name": candidate.name, **scores, "seconds": time.perf_counter() - start})
    rows.sort(key=lambda row: -row[args.by])
    shown = rows[: args.top] if args.top > 0 else rows
    header = ["rank", "name", "#params", "E", "E~", "log10 E", "NASWOT", "synflow", "s"]
    keys = ["params", "E", "relative", "log10_E", "naswot", "synflow", "seconds"]
    print(
        f"{len(rows)} candidates on {len(images)} {args.dataset} images, ranked by {args.by} (highest first):\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rank, row in enumerate(shown, start=1):
        print(f"| {rank} | {row['name']} | " + " | ".join(_number(row[k]) for k in keys) + " |")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["rank", "name", *keys])
            writer.writeheader()
            for rank, row in enumerate(rows, start=1):
                writer.writerow({"rank": rank, **row})
    return 0


def run_reproduce_predictor(args: argparse.Namespace) -> int:
    """``emergence-lightning reproduce predictor``: the study, its tables and figures."""
    import torch

    from emergence_lightning.paper.predictor.analysis import (
        correlation_markdown,
        correlation_table,
        write_tables,
    )
    from emergence_lightning.paper.predictor.plots import scatter_grid, stopping_figure
    from emergence_lightning.paper.predictor.space import named_space
    from emergence_lightning.paper.predictor.stopping import compare_rules, with_two_layers
    from emergence_lightning.paper.predictor.study import run_study
    from emergence_lightning.paper.predictor.study_data import load_study_data
    from emergence_lightning.paper.predictor.training import RunConfig

    quick = args.quick
    dataset = args.dataset or ("mnist5k" if quick else "fashion-mnist")
    space = args.space or ("quick" if quick else "study")
    seeds = 2 if args.seeds is None else args.seeds
    train_size = args.train_size if args.train_size is not None else (None if quick else 10000)
    if train_size == 0:
        train_size = None
    if args.threads < 1:
        return _error(f"`--threads` must be >= 1, got {args.threads}.")
    if seeds < 1:
        return _error(f"`--seeds` must be >= 1, got {seeds}.")
    torch.set_num_threads(args.threads)
    try:
        config = RunConfig(
            budget_epochs=args.budget_epochs or (2 if quick else 3),
            max_epochs=args.stop_epochs or (8 if quick else 10),
            threshold=args.threshold,
            train_size=train_size,
        )
        data = load_study_data(dataset, args.data_dir, train_size)
    except (FileNotFoundError, ValueError) as error:
        return _error(str(error))
    candidates = named_space(space, data.input_shape, data.num_classes)
    root = Path(args.log_dir) / "predictor" / dataset
    deadline = None if args.deadline_minutes is None else time.time() + 60 * args.deadline_minutes
    start = time.perf_counter()
    print(f"predictor: {len(candidates)} architectures x {seeds} seeds on {dataset} "
          f"({len(data.x_train)} training, {len(data.x_val)} validation images); runs cached in {root / 'runs'}")  # fmt: skip
    records = run_study(candidates, data, config, seeds, root / "runs", deadline=deadline)
    elapsed = time.perf_counter() - start
    if len(records) < 3:
        return _error(f"only {len(records)} runs finished; a correlation needs at least 3.")
    rows = correlation_table(records, resamples=args.resamples)
    stopping = {"all runs": compare_rules(records)}
    if with_two_layers(records):
        stopping["runs with two or more tracked layers (E can be non-zero)"] = compare_rules(
            with_two_layers(records)
        )
    paths = write_tables(root, rows, stopping, records)
    for family in sorted({r["family"] for r in records}):  # MLPs and CNNs apart: is it only the family?
        subset = [r for r in records if r["family"] == family]
        if len(subset) >= 3:
            table = correlation_markdown(correlation_table(subset, resamples=args.resamples))
            paths[f"correlations_{family}_md"] = root / f"correlations-{family}.md"
            paths[f"correlations_{family}_md"].write_text(f"{family} only ({len(subset)} runs):\n\n{table}")
    title = f"{dataset}: {len(records)} runs, accuracy after {config.budget_epochs} epochs"
    figures = [scatter_grid(records, rows, root / "predictor-scatter.png", title),
               stopping_figure(records, root / "predictor-stopping.png")]  # fmt: skip
    seconds = [r["seconds"] for r in records]
    print(f"\n{len(records)} of {len(candidates) * seeds} runs in {elapsed:.0f} s (this call); "
          f"per run: median {sorted(seconds)[len(seconds) // 2]:.1f} s, total {sum(seconds):.0f} s of training\n")  # fmt: skip
    print(paths["correlations_md"].read_text())
    for key in sorted(
        k for k in paths if k.startswith("correlations_") and k.endswith("_md") and k != "correlations_md"
    ):
        print(paths[key].read_text())
    print(paths["stopping_md"].read_text())
    for path in [*paths.values(), *figures]:
        print(f"  {path}")
    return 0
