"""LightningCLI: both callbacks configured from the example YAML file, a real fit on a tiny schedule."""

import csv
import re
import runpy
from pathlib import Path

import pytest
import yaml
from tb import read_scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emergence_lightning import EmergenceCallback, PruneAndBranchCallback

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (the `test` extra installs it)")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_cli"


def _cli(args):
    main = runpy.run_path(str(EXAMPLE / "main.py"))["main"]
    return main(args)


def test_fit_from_the_example_yaml_configures_both_callbacks(tmp_path):
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    # A tiny schedule of the same run: fork after epoch 1 of 3, a few batches of MNIST 5k.
    config["trainer"].update(
        max_epochs=3, limit_train_batches=3, limit_val_batches=2, enable_progress_bar=False
    )
    config["trainer"]["callbacks"][0]["init_args"]["threshold"] = 0.1
    config["trainer"]["callbacks"][1]["init_args"].update(branch_epoch=1, amounts=[0.5], verbose=False)
    config["model"]["init_args"]["hidden"] = [16, 8]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    cli = _cli(["fit", "--config", str(path)])

    emergence = [cb for cb in cli.trainer.callbacks if isinstance(cb, EmergenceCallback)]
    branches = [cb for cb in cli.trainer.callbacks if isinstance(cb, PruneAndBranchCallback)]
    assert len(emergence) == len(branches) == 1
    assert emergence[0].threshold == 0.1 and emergence[0].statistic == "mean"
    assert branches[0].amounts == (0.5,) and branches[0].branch_epoch == 1
    log_dir = Path(cli.trainer.logger.log_dir)
    # Measured before training and after each of the parent's epochs: E logged at 0 and 1.
    parent = EventAccumulator(str(log_dir))  # this folder's event file only, not the branches'
    parent.Reload()
    assert len(parent.Scalars("emergence/E")) == 2
    with open(log_dir / "branches" / "summary.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"control", "pruned-50"} and {r["status"] for r in rows.values()} == {"finished"}
    assert rows["pruned-50"]["epochs"] == "2"
    for name in rows:
        assert "emergence/E" in read_scalars(log_dir / "branches" / name)
    # LightningCLI saved the configuration it ran, callbacks included, beside the logs.
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert [cb["class_path"] for cb in saved["trainer"]["callbacks"]] == [
        "emergence_lightning.EmergenceCallback", "emergence_lightning.PruneAndBranchCallback",
    ]  # fmt: skip


def test_a_bad_callback_argument_in_yaml_names_the_argument(tmp_path, capsys):
    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["statistic"] = "median"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    # `statistic` is a Literal: the parser refuses the value before the callback is built, naming both.
    with pytest.raises(SystemExit, match="2"):
        _cli(["fit", "--config", str(path)])
    assert re.search(
        r"(?s)Parser key \"statistic\".*'mean', 'mean_abs', 'normalized_mean_abs', 'fraction', 'max'.*Got value: median",
        capsys.readouterr().err,
    )


def test_cli_help_shows_the_choices_in_clean_text():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(EmergenceCallback)
    text = parser.format_help()
    for option, choices in [
        ("statistic", "{mean,mean_abs,normalized_mean_abs,fraction,max}"),
        ("variant", "{paper,induced}"),
        ("connectivity", "{dense,weights}"),
    ]:
        assert f"--{option} {choices}" in text
    assert "--every_n_train_steps" in text and "--probe_batches" in text
    for markup in (":class:", ":func:", ":mod:", ":attr:", "``", "~emergence_lightning"):
        assert markup not in text, markup


@pytest.mark.parametrize("name", ["EmergenceCallback", "PruneAndBranchCallback"])
def test_the_example_cli_knows_both_callbacks_by_their_short_names(name, capsys):
    # Without the example's `import emergence_lightning`, jsonargparse asks for a dot import path.
    with pytest.raises(SystemExit, match="^0$"):
        _cli(["fit", "--trainer.callbacks.help", name])
    help_text = capsys.readouterr().out
    expected = "statistic" if name == "EmergenceCallback" else "amounts"  # an argument only that class has
    assert f"--trainer.callbacks.{expected}" in help_text
