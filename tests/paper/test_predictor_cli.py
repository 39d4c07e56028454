"""`emergence-lightning rank` and `reproduce predictor` through the real command-line entry point."""

import csv

import pytest
from torch import nn

from emergence_lightning.paper.cli import main


def candidates():
    """A factory for `--factory test_predictor_cli:candidates` (tests/ is on sys.path)."""
    return {
        "narrow": nn.Sequential(
            nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10)
        ),
        "wide": nn.Sequential(
            nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
        ),
    }


def test_rank_the_paper_mlp(capsys):
    assert main(["rank", "--space", "paper", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 candidates on 256 mnist5k images, ranked by log10_E" in out
    # 784*128+128 + 128*64+64 + 64*10+10 = 109,386 parameters
    assert "| 1 | paper-mlp-784-128-64-10 | 1.094e+05 |" in out


def test_rank_candidates_of_a_factory_by_params(tmp_path, capsys):
    table = tmp_path / "ranked.csv"
    assert main(["rank", "--factory", "test_predictor_cli:candidates", "--by", "params", "--batches", "1",
                 "--csv", str(table)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.index("| 1 | wide |") < out.index("| 2 | narrow |")
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    # 784*w + w + w*w + w + w*10 + 10 for w = 32 and 8
    assert [(r["name"], float(r["params"])) for r in rows] == [("wide", 26506.0), ("narrow", 6442.0)]


def test_rank_refuses_a_bad_factory(capsys):
    assert main(["rank", "--factory", "no_such_module_xyz:models"]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["rank", "--factory", "test_predictor_cli"]) == 2
    assert "`factory` must be 'module:function', got 'test_predictor_cli'" in capsys.readouterr().err
    assert main(["rank", "--batches", "0"]) == 2
    assert "`--batches` must be >= 1, got 0" in capsys.readouterr().err


def test_reproduce_predictor_is_an_experiment(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert "predictor" in out and "--budget-epochs" in out and "--quick" in out


def test_reproduce_predictor_refuses_bad_settings_before_any_run(tmp_path, capsys):
    assert main(["reproduce", "predictor", "--quick", "--seeds", "0", "--log-dir", str(tmp_path)]) == 2
    assert "`--seeds` must be >= 1, got 0" in capsys.readouterr().err
    argv = [
        "reproduce",
        "predictor",
        "--quick",
        "--budget-epochs",
        "5",
        "--stop-epochs",
        "3",
        "--log-dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "`budget_epochs` (5) must not exceed `max_epochs` (3)" in capsys.readouterr().err
    assert not (tmp_path / "predictor").exists()
