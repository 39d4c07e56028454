"""Reports from real TensorBoard event files: written by SummaryWriter, and by a real Lightning fit."""

import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from emergence_lightning import report
from emergence_lightning.callbacks import EmergenceCallback
from emergence_lightning.models import PaperMLP
from emergence_lightning.report import find_runs, load_scalars, make_report

FIGURES = {
    "emergence_and_accuracy_change",
    "relative_emergence",
    "emergence_log",
    "train_accuracy",
    "active_fraction_per_layer",
}


def _write_run(path, first_epoch, epochs, e_start, seed_shift=0.0, steps_per_epoch=10):
    """Log like Lightning + EmergenceCallback: one measurement before training, then one per epoch end.

    Every value comes with Lightning's `epoch` scalar, the epoch in progress. Epoch ``e`` ends at
    step ``(e + 1) * steps_per_epoch - 1``; E halves each epoch, accuracies rise by 0.1.
    """
    writer = SummaryWriter(str(path))
    points = [(first_epoch * steps_per_epoch, first_epoch, None)]  # (step, epoch, accuracy); before training
    points += [((e + 1) * steps_per_epoch - 1, e, 0.5 + 0.1 * (e - first_epoch) + seed_shift)
               for e in range(first_epoch, first_epoch + epochs)]  # fmt: skip
    for index, (step, epoch, accuracy) in enumerate(points):
        e = e_start / 2**index
        writer.add_scalar("emergence/E", e, step)
        writer.add_scalar("emergence/relative", e / 1000, step)
        writer.add_scalar("emergence/active/net.2", 10 + index, step)
        writer.add_scalar("emergence/dead/net.2", 10 - index, step)
        writer.add_scalar("epoch", epoch, step)
        if accuracy is not None:
            writer.add_scalar("train_acc", accuracy, step)
            writer.add_scalar("val_acc", accuracy - 0.05, step)
    writer.close()


@pytest.fixture
def branch_logs(tmp_path):
    """A parent run trained 3 epochs, then forked into two branches that train 2 more."""
    log_dir = tmp_path / "version_0"
    _write_run(log_dir, first_epoch=0, epochs=3, e_start=8000)
    _write_run(log_dir / "branches" / "control", first_epoch=3, epochs=2, e_start=1000)
    _write_run(log_dir / "branches" / "pruned-50", first_epoch=3, epochs=2, e_start=400)
    return log_dir


def _assert_png_has_content(path):
    image = imread(path)
    height, width = image.shape[:2]
    assert height >= 300 and width >= 600
    ink = (image[..., :3] < 0.9).any(axis=-1).mean()  # share of pixels that are not white
    assert 0.01 < ink < 0.6


def _read_csv(path):
    with open(path, newline="") as handle:
        return {row["run"]: row for row in csv.DictReader(handle)}


def test_find_runs_names_runs_by_relative_path(branch_logs):
    assert list(find_runs(branch_logs)) == ["branches/control", "branches/pruned-50", "version_0"]
    assert list(find_runs(branch_logs.parent)) == [
        "version_0", "version_0/branches/control", "version_0/branches/pruned-50",
    ]  # fmt: skip


def test_load_scalars_is_tidy_with_epochs(branch_logs):
    rows = load_scalars(branch_logs.parent)
    e_rows = sorted(
        (r.step, r.epoch, r.value) for r in rows if r.run == "version_0" and r.tag == "emergence/E"
    )
    assert e_rows == [(0, 0, 8000.0), (9, 0, 4000.0), (19, 1, 2000.0), (29, 2, 1000.0)]
    assert {r.epoch for r in rows if r.run == "version_0/branches/control"} == {3, 4}


def test_make_report_on_branches(branch_logs, tmp_path):
    result = make_report(branch_logs.parent, out_dir=tmp_path / "report")
    assert set(result.figures) == FIGURES
    for path in result.figures.values():
        assert path.parent == tmp_path / "report"
        _assert_png_has_content(path)
    table = _read_csv(result.table_csv)
    parent, control, pruned = (
        table[f"version_0{name}"] for name in ("", "/branches/control", "/branches/pruned-50")
    )
    # The parent's before-training value sits at epoch 0, epoch e's end at e + 1.
    assert (parent["epochs"], control["epochs"], pruned["epochs"]) == ("3", "5", "5")
    assert float(parent["final_val_acc"]) == pytest.approx(0.65) and float(
        parent["best_val_acc"]
    ) == pytest.approx(0.65)
    assert float(control["final_E"]) == 250.0 and float(pruned["final_E"]) == 100.0
    assert float(pruned["final_relative_E"]) == pytest.approx(0.1)
    markdown = result.table_markdown.read_text()
    assert "| run | epochs | final_val_acc | best_val_acc | final_E | final_relative_E |" in markdown
    assert "| version_0/branches/pruned-50 | 5 | 0.5500 | 0.5500 | 100 | 0.1 |" in markdown


def test_epoch_axis_and_accuracy_change_across_the_fork(branch_logs):
    curves = report._run_curves(load_scalars(branch_logs.parent), "emergence", branch_logs.parent.name)
    parent, pruned = curves["version_0"], curves["version_0/branches/pruned-50"]
    # Before-training E at epoch 0 (the parent) or at the fork epoch 3 (a branch); epoch e's end at e + 1.
    assert parent["emergence/E"][0].tolist() == [0, 1, 2, 3]
    assert pruned["emergence/E"][0].tolist() == [3, 4, 5]
    assert parent["train_acc"][0].tolist() == [1, 2, 3]
    # The branch's first change compares its epoch-4 accuracy (0.5) with the parent's at the fork (0.7).
    x, change = pruned["train_acc_change"]
    assert x.tolist() == [4, 5] and change == pytest.approx([-0.2, 0.1])
    assert pruned["emergence/active_share/net.2"][1] == pytest.approx([0.5, 0.55, 0.6])


def test_seed_groups_average_with_sample_std(tmp_path):
    for seed in range(3):
        _write_run(
            tmp_path / f"seed-{seed}" / "mlp", first_epoch=0, epochs=2, e_start=100, seed_shift=0.1 * seed
        )
    curves = report._run_curves(load_scalars(tmp_path), "emergence", tmp_path.name)
    groups = {"mlp": ["seed-0/mlp", "seed-1/mlp", "seed-2/mlp"]}
    x, mean, std, count = report._aggregate(curves, groups)["mlp"]["train_acc"]
    assert x.tolist() == [1, 2] and count.tolist() == [3, 3]
    assert mean == pytest.approx([0.6, 0.7]) and std == pytest.approx([0.1, 0.1])


def test_default_out_dir_is_inside_log_dir(branch_logs):
    result = make_report(branch_logs)
    assert result.out_dir == branch_logs / "report"
    assert result.table_csv.is_file() and result.table_markdown.is_file()
    # A second report reads the same runs: PNG and CSV files are not event files.
    assert make_report(branch_logs).runs == result.runs


def test_seeds_are_grouped(tmp_path):
    for seed in range(3):
        _write_run(
            tmp_path / f"seed-{seed}" / "mlp", first_epoch=0, epochs=3, e_start=100, seed_shift=0.01 * seed
        )
    result = make_report(tmp_path)
    assert result.groups == {"mlp": ["seed-0/mlp", "seed-1/mlp", "seed-2/mlp"]}
    assert len(_read_csv(result.table_csv)) == 3  # the table stays per run
    _assert_png_has_content(result.figures["train_accuracy"])


def test_run_without_epoch_scalar_uses_steps(tmp_path):
    writer = SummaryWriter(str(tmp_path / "plain"))
    for step, value in enumerate([0.2, 0.4, 0.7]):
        writer.add_scalar("train_acc", value, step)
    writer.close()
    result = make_report(tmp_path)
    assert set(result.figures) == {"train_accuracy"}
    assert _read_csv(result.table_csv)["plain"]["epochs"] == "2"


def test_report_from_a_real_lightning_fit(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.rand(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1,
        logger=TensorBoardLogger(tmp_path, name="fit"), callbacks=[EmergenceCallback()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(PaperMLP(hidden=(16, 8)), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    result = make_report(tmp_path)
    # PaperMLP logs train_loss and val_loss, so the loss figure is drawn too.
    assert result.runs == ["fit/version_0"] and set(result.figures) == FIGURES | {"loss"}
    row = _read_csv(result.table_csv)["fit/version_0"]
    assert row["epochs"] == "2"
    assert float(row["final_val_acc"]) == pytest.approx(trainer.callback_metrics["val_acc"].item())
    assert float(row["final_E"]) == pytest.approx(trainer.callback_metrics["emergence/E"].item(), rel=1e-6)
    for path in result.figures.values():
        _assert_png_has_content(path)


def test_missing_log_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="Log directory .*absent' does not exist"):
        make_report(tmp_path / "absent")


def test_log_dir_without_event_files(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_0" / "hparams.yaml").write_text("lr: 0.005\n")
    with pytest.raises(
        FileNotFoundError, match=r"No TensorBoard event files \(events.out.tfevents\*\) under"
    ):
        make_report(tmp_path)


def test_event_files_without_scalars(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    writer.add_text("note", "no scalars here")
    writer.close()
    with pytest.raises(ValueError, match="hold no scalars"):
        make_report(tmp_path)


def test_bad_prefix(branch_logs):
    with pytest.raises(
        ValueError, match="`prefix` must be a non-empty string not ending in '/', got 'emergence/'"
    ):
        make_report(branch_logs, prefix="emergence/")


def test_parent_runs_of_several_seeds_form_one_group():
    from emergence_lightning.report import _group_name

    assert _group_name("seed-0") == _group_name("seed-2") == "parent"
    assert _group_name("seed-1/branches/pruned-30") == "branches/pruned-30"
    assert _group_name("version_0") == "version_0"
