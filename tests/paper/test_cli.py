import os

import matplotlib.image
import pytest

from emergence_lightning.paper.cli import main


@pytest.mark.slow
def test_demo_path_runs_end_to_end(tmp_path, capsys):
    # the README's demo with the shortest schedule: fork after 1 epoch, 1 epoch per branch
    code = main(
        ["demo", "--log-dir", str(tmp_path), "--epochs-before", "1", "--epochs-after", "1", "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    root = tmp_path / "mlp-prune" / "seed-0"
    for branch in ("control", "pruned-30", "pruned-50", "pruned-70"):
        assert list((root / "branches" / branch).rglob("events.out.tfevents*")), branch
    assert (root / "branches" / "summary.csv").exists()
    report = tmp_path / "mlp-prune" / "report"
    figures = sorted(report.glob("*.png"))
    assert len(figures) >= 4
    for figure in figures:
        image = matplotlib.image.imread(figure)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.01  # not blank
    assert "Figures and summary in" in out and "pruned-70" in out


def test_unknown_experiment_lists_valid_ones(capsys):
    with pytest.raises(SystemExit, match="^2$"):  # argparse exits with status 2
        main(["reproduce", "resnet"])
    expected = (
        "invalid choice: 'resnet' (choose from 'mlp-prune', 'transfer', 'cnn', 'predictor', 'activity-rule')"
    )
    assert expected in capsys.readouterr().err


def test_missing_data_files_say_which_and_where(tmp_path, capsys):
    code = main(["reproduce", "mlp-prune", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"),
                 "--log-dir", str(tmp_path / "runs"), "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path / "nowhere") in err


def test_widths_must_be_positive(capsys):
    with pytest.raises(SystemExit, match="^2$"):  # argparse exits with status 2
        main(["reproduce", "mlp-prune", "--hidden", "128,0"])
    assert "widths must be positive integers, got '128,0'" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_log_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(SystemExit, match=r"can't be written"):
        main(["demo", "--log-dir", str(locked / "runs")])


def test_unwritable_log_dir_under_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=r"the log directory .*file/runs' can't be written"):
        main(["demo", "--log-dir", str(blocker / "runs")])


def test_report_on_folder_without_event_files(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert (
        "No TensorBoard event files (events.out.tfevents*) and no CSV logs (metrics.csv)"
        in capsys.readouterr().err
    )


def test_prepare_fashion_mnist_without_debian_files(tmp_path, capsys):
    assert (
        main(["prepare-fashion-mnist", "--data-dir", str(tmp_path), "--source", str(tmp_path / "none")]) == 2
    )
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["reproduce", "transfer"], (20, 20)),  # section 4.3's schedule
        (["reproduce", "mlp-prune"], (5, 15)),
        (["reproduce", "transfer", "--epochs-before", "3", "--epochs-after", "4"], (3, 4)),
    ],
)
def test_reproduce_uses_the_papers_epochs_unless_given(tmp_path, monkeypatch, argv, expected):
    from emergence_lightning.paper import cli, experiments

    seen = {}

    def fake_run(name, settings):
        seen["epochs"] = (settings.epochs_before, settings.epochs_after)
        raise FileNotFoundError("stop here: only the settings are under test")

    monkeypatch.setattr(experiments, "run_experiment", fake_run)
    assert cli.main([*argv, "--log-dir", str(tmp_path)]) == 2
    assert seen["epochs"] == expected


def _subcommands():
    import argparse

    from emergence_lightning.paper.cli import _parser

    parser = _parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, subparsers.choices


def _shown_default(default):
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def test_every_option_has_help_with_its_default():
    import argparse

    parser, commands = _subcommands()
    assert set(commands) == {"demo", "reproduce", "prepare-fashion-mnist", "report", "rank", "branch"}
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text.strip(), f"{name} {action.dest}: no help text"
            if action.option_strings and action.default not in (None, False):
                # A default of None or False is explained in words ("default: detected") or is a flag.
                assert f"default: {_shown_default(action.default)}" in text, (name, action.dest, text)
            elif action.option_strings and action.default is None:
                assert "default" in text, (name, action.dest, text)
    assert "default: 128,64" in commands["reproduce"].format_help()


@pytest.mark.parametrize("command", ["demo", "reproduce", "prepare-fashion-mnist", "report"])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit, match="^0$"):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"emergence-lightning {command}" in out
    assert "default: " in out


def test_version_comes_from_the_installed_package(capsys):
    import re
    from importlib import metadata
    from pathlib import Path

    with pytest.raises(SystemExit, match="^0$"):
        main(["--version"])
    printed = capsys.readouterr().out.strip()
    # pyproject.toml's version when written there (tomllib needs Python 3.11, so a regex reads it);
    # a dynamic version is whatever the build gave the package metadata.
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    static = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.MULTILINE)
    expected = static.group(1) if static else metadata.version("emergence-lightning")
    assert printed == f"emergence-lightning {expected}"


def test_report_on_a_csv_logger_folder(tmp_path, capsys):
    """`report` on what Lightning's CSVLogger writes: figures and the table, no event files needed."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv", version=0)
    for epoch, (E, acc) in enumerate([(100.0, 0.5), (80.0, 0.7), (60.0, 0.8)]):
        step = (epoch + 1) * 10 - 1
        logger.log_metrics({"emergence/E": E, "emergence/relative": E / 1000, "epoch": epoch}, step)
        logger.log_metrics({"train_acc": acc, "val_acc": acc - 0.1, "epoch": epoch}, step)
    logger.save()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| csv/version_0 | version_0 | 3 | 3 | 0.8000 | 0.7000 | 0.7000 | 60 | 0.06 |" in out
    assert {p.name for p in (tmp_path / "out").glob("*.png")} >= {"emergence_log.png", "val_accuracy.png"}
    assert main(["report", str(tmp_path), "--source", "tensorboard"]) == 2
    assert "No TensorBoard event files" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--source", "wandb"]) == 2
    assert "`source` must be one of ('auto', 'tensorboard', 'csv'), got 'wandb'" in capsys.readouterr().err
