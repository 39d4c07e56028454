"""Reports from real TensorBoard event files: written by SummaryWriter, and by a real Lightning fit."""

import csv
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from matplotlib.image import imread
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from emergence_lightning.callbacks import EmergenceCallback
from emergence_lightning.paper import report
from emergence_lightning.paper.models import PaperMLP
from emergence_lightning.paper.report import find_runs, load_scalars, make_report

FIGURES = {
    "emergence_and_accuracy_change",
    "relative_emergence",
    "emergence_log",
    "train_accuracy",
    "val_accuracy",
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
    assert (parent["last_epoch"], control["last_epoch"], pruned["last_epoch"]) == ("3", "5", "5")
    # Epochs trained in the run: the parent 0 -> 3, a branch from the fork at 3 to 5.
    assert (parent["epochs"], control["epochs"], pruned["epochs"]) == ("3", "2", "2")
    assert (parent["name"], control["name"], pruned["name"]) == ("parent", "control", "pruned-50")
    assert float(control["final_train_acc"]) == pytest.approx(0.6)
    assert float(parent["final_val_acc"]) == pytest.approx(0.65) and float(
        parent["best_val_acc"]
    ) == pytest.approx(0.65)
    assert float(control["final_E"]) == 250.0 and float(pruned["final_E"]) == 100.0
    assert float(pruned["final_relative_E"]) == pytest.approx(0.1)
    markdown = result.table_markdown.read_text()
    assert (
        "| run | name | epochs | last_epoch | final_train_acc | final_val_acc | best_val_acc | final_E "
        "| final_relative_E |" in markdown
    )
    row = "| version_0/branches/pruned-50 | pruned-50 | 2 | 5 | 0.6000 | 0.5500 | 0.5500 | 100 | 0.1 |"
    assert row in markdown


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
        FileNotFoundError,
        match=r"No TensorBoard event files \(events.out.tfevents\*\) and no CSV logs \(metrics.csv\) under",
    ):
        make_report(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No CSV logs \(metrics.csv\) under"):
        make_report(tmp_path, source="csv")


def test_unknown_source(branch_logs):
    with pytest.raises(
        ValueError, match=r"`source` must be one of \('auto', 'tensorboard', 'csv'\), got 'wandb'"
    ):
        make_report(branch_logs, source="wandb")


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
    from emergence_lightning.paper.report import _group_name

    assert _group_name("seed-0") == _group_name("seed-2") == "parent"
    assert _group_name("seed-1/branches/pruned-30") == "branches/pruned-30"
    assert _group_name("version_0") == "version_0"


# ---- figures, read back from the drawing code -----------------------------------------------
def _write_values(path, first_epoch, E, acc, steps_per_epoch=10):
    """A run as Lightning + EmergenceCallback log it: E before training, then E and train_acc per epoch."""
    writer = SummaryWriter(str(path))
    writer.add_scalar("emergence/E", E[0], first_epoch * steps_per_epoch)
    writer.add_scalar("epoch", first_epoch, first_epoch * steps_per_epoch)
    for index, (e, a) in enumerate(zip(E[1:], acc)):
        epoch = first_epoch + index
        step = (epoch + 1) * steps_per_epoch - 1
        writer.add_scalar("emergence/E", e, step)
        writer.add_scalar("train_acc", a, step)
        writer.add_scalar("epoch", epoch, step)
    writer.close()


PARENT_ACC = [0.2, 0.6, 0.8, 0.9]  # epochs 1..4; the fork is after epoch 4
BRANCH_ACC = {"control": [0.91, 0.93, 0.95], "pruned-50": [0.90, 0.915, 0.94]}


@pytest.fixture
def forked_logs(tmp_path):
    """A parent whose accuracy jumps early (0.2 -> 0.9) and branches that differ by hundredths after it."""
    root = tmp_path / "logs" / "seed-0"
    _write_values(root, 0, [1000, 800, 600, 500, 450], PARENT_ACC)
    _write_values(root / "branches" / "control", 4, [450, 420, 400, 390], BRANCH_ACC["control"])
    _write_values(root / "branches" / "pruned-50", 4, [300, 320, 310, 305], BRANCH_ACC["pruned-50"])
    return tmp_path / "logs"


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_zoomed_panel_is_scaled_to_the_branches_after_the_fork(forked_logs, tmp_path):
    result = make_report(forked_logs, out_dir=tmp_path / "out")
    whole, zoom = result.drawings["train_accuracy"].axes
    assert whole.get_ylim()[0] < 0.2 < 0.95 < whole.get_ylim()[1]
    low, high = zoom.get_ylim()
    # Every value from the fork on (0.90 ... 0.95) is inside, the parent's early ones (<= 0.8) are not.
    assert 0.8 < low < 0.90 and 0.95 < high < 0.97
    assert zoom.get_xlim()[0] == pytest.approx(4 - 0.3) and zoom.get_xlim()[1] == pytest.approx(7 + 0.3)
    # Change in accuracy: the parent's 0.4 jump sets the whole-run panel only; the zoomed one shows
    # the parent's 0.1 into the fork (where every branch line starts) and the branches' changes.
    whole_change, zoom_change = result.drawings["emergence_and_accuracy_change"].axes[2:]
    assert whole_change.get_ylim()[1] > 0.4
    branch_changes = [0.01, 0.02, 0.02, 0.0, 0.015, 0.025]  # differences of BRANCH_ACC, first from 0.9
    low, high = zoom_change.get_ylim()
    assert low < min(branch_changes) and 0.1 < high < 0.2


def test_every_branch_line_starts_at_the_fork_point(forked_logs, tmp_path):
    result = make_report(forked_logs, out_dir=tmp_path / "out")
    for name in ("train_accuracy", "emergence_log", "emergence_and_accuracy_change"):
        for ax in result.drawings[name].axes:
            lines = _lines(ax)
            for branch in ("control", "pruned-50"):
                assert lines[branch].get_xdata()[0] == 4, (name, branch)
    accuracy = _lines(result.drawings["train_accuracy"].axes[0])
    for branch, values in BRANCH_ACC.items():  # from the parent's value at the fork, then its own
        assert list(accuracy[branch].get_ydata()) == pytest.approx([0.9, *values])
        assert list(accuracy[branch].get_xdata()) == [4, 5, 6, 7]
    e_lines = _lines(result.drawings["emergence_log"].axes[0])
    assert e_lines["pruned-50"].get_ydata()[0] == 300  # a branch's own E at the fork (after pruning) is kept


def test_one_name_for_the_parent_and_a_fixed_colour_per_branch(forked_logs, tmp_path):
    from matplotlib.colors import to_rgba

    from emergence_lightning.paper.report.plot import branch_color

    result = make_report(forked_logs, out_dir=tmp_path / "out")
    for figure in result.drawings.values():
        labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
        if labels:
            assert labels[:3] == ["parent", "control", "pruned-50"]
    assert "seed-0" not in {r["name"] for r in _read_csv(result.table_csv).values()}
    # The colour of pruned-50 is its own, whatever other branches a report holds.
    only_pruned = tmp_path / "only" / "seed-0"
    _write_values(only_pruned, 0, [1000, 800, 600, 500, 450], PARENT_ACC)
    _write_values(only_pruned / "branches" / "pruned-50", 4, [300, 320, 310, 305], BRANCH_ACC["pruned-50"])
    other = make_report(tmp_path / "only", out_dir=tmp_path / "out2")
    for report_result in (result, other):
        for name in ("train_accuracy", "emergence_log"):
            lines = _lines(report_result.drawings[name].axes[0])
            assert to_rgba(lines["pruned-50"].get_color()) == to_rgba(branch_color("pruned-50"))
            assert to_rgba(lines["parent"].get_color()) == to_rgba(branch_color("parent"))
    colors = {to_rgba(branch_color(n)) for n in ("parent", "control", "pruned-30", "pruned-50", "pruned-70")}
    assert len(colors) == 5


def test_log_axis_only_over_a_wide_range(forked_logs, branch_logs, tmp_path):
    narrow = make_report(forked_logs, out_dir=tmp_path / "narrow").drawings["emergence_log"].axes[0]
    assert narrow.get_yscale() == "linear"  # E from 300 to 1000: a log axis would show three ticks
    wide = make_report(branch_logs, out_dir=tmp_path / "wide").drawings["emergence_log"].axes[0]
    assert wide.get_yscale() == "log"  # E from 8000 down to 100


def test_layer_labels_give_sizes_and_text_is_readable_at_print_size(branch_logs, tmp_path):
    result = make_report(branch_logs, out_dir=tmp_path / "out")
    figure = result.drawings["active_fraction_per_layer"]
    for ax in figure.axes:
        if ax.get_visible():
            # _write_run logs 10 + k active and 10 - k dead nodes of net.2: 20 nodes.
            assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "net.2 (20 nodes)"
    for name, figure in result.drawings.items():
        assert figure.get_size_inches()[0] == pytest.approx(7.0)  # a two-column page's text width
        texts = [t for ax in figure.axes for t in (ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels())]
        assert min(t.get_fontsize() for t in texts) >= 8, name


def test_markdown_and_csv_tables_agree(branch_logs, tmp_path):
    result = make_report(branch_logs, out_dir=tmp_path / "out")
    lines = result.table_markdown.read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    with open(result.table_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert header == list(rows[0]) == list(report.TABLE_COLUMNS)
    for line, row in zip(lines[2:], rows, strict=True):
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        for column in header:
            if column in ("run", "name", "epochs", "last_epoch"):
                assert cells[column] == row[column]
            else:
                assert float(cells[column]) == pytest.approx(float(row[column]), rel=1e-3)


@pytest.fixture(scope="module")
def logged_both_ways(tmp_path_factory):
    """A real fit with branches, logged by a TensorBoardLogger and a CSVLogger into the same folders."""
    from emergence_lightning import PruneAndBranchCallback

    root = tmp_path_factory.mktemp("both")
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.rand(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )
    trainer = pl.Trainer(
        max_epochs=3, limit_train_batches=2, limit_val_batches=1,
        logger=[TensorBoardLogger(root, name="fit", version="seed-0"), CSVLogger(root, name="fit", version="seed-0")],
        callbacks=[
            EmergenceCallback(), PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False),
        ],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():  # the CSVLogger of a branch finds the TensorBoard files in its folder
        warnings.filterwarnings("ignore", message=".*exists and is not empty")
        trainer.fit(
            PaperMLP(hidden=(16, 8), lr=0.5), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16)
        )
    return root / "fit"


def test_report_agrees_with_the_branches_summary_csv(logged_both_ways, tmp_path):
    """A real fit with branches: the report's table and PruneAndBranchCallback's own summary.csv agree."""
    result = make_report(logged_both_ways, out_dir=tmp_path / "report")
    table = _read_csv(result.table_csv)
    with open(logged_both_ways / "seed-0" / "branches" / "summary.csv", newline="") as handle:
        branches = list(csv.DictReader(handle))
    assert {b["name"] for b in branches} == {"control", "pruned-50"}
    for branch in branches:
        row = table[f"seed-0/branches/{branch['name']}"]
        assert row["name"] == branch["name"]
        assert row["epochs"] == branch["epochs"] == "2"  # 3 epochs in all, forked after 1
        assert float(row["final_val_acc"]) == pytest.approx(float(branch["final"]), abs=1e-3)
        assert float(row["final_E"]) == float(branch["E_end"])
    assert table["seed-0"]["name"] == "parent" and table["seed-0"]["epochs"] == "1"


def _assert_same_numbers(a, b, key):
    assert list(a) == list(b), key
    for column in a:
        try:
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-6, nan_ok=True), (key, column)
        except ValueError:  # text: run, name
            assert a[column] == b[column], (key, column)


def test_csv_logs_give_the_same_series_figures_and_table_as_event_files(logged_both_ways, tmp_path):
    """One run, logged by TensorBoard and CSV: the report reads the same values from either."""
    from_tb = load_scalars(logged_both_ways, source="tensorboard")
    from_csv = load_scalars(logged_both_ways, source="csv")
    assert {r.run for r in from_csv} == {"seed-0", "seed-0/branches/control", "seed-0/branches/pruned-50"}
    # Every value TensorBoard holds, the CSV holds at the same step and epoch (float32 vs. full precision).
    tb_values = sorted((r.run, r.tag, r.step, r.epoch, r.value) for r in from_tb)
    csv_values = sorted((r.run, r.tag, r.step, r.epoch, r.value) for r in from_csv)
    assert [v[:4] for v in tb_values] == [v[:4] for v in csv_values]
    assert [v[4] for v in tb_values] == pytest.approx([v[4] for v in csv_values], rel=1e-6)
    assert {r.tag for r in from_csv} >= {"emergence/E", "emergence/active/net.2", "train_acc", "val_acc"}
    # The series drawn: per run, every tag and derived series on the same epochs.
    curves = {
        source: report._run_curves(rows, "emergence", logged_both_ways.name)
        for source, rows in (("tensorboard", from_tb), ("csv", from_csv))
    }
    assert curves["tensorboard"].keys() == curves["csv"].keys()
    for run, series in curves["tensorboard"].items():
        assert series.keys() == curves["csv"][run].keys(), run
        for name, (x, y) in series.items():
            csv_x, csv_y = curves["csv"][run][name]
            assert x.tolist() == csv_x.tolist(), (run, name)
            assert y == pytest.approx(csv_y, rel=1e-6, nan_ok=True), (run, name)
    # The report: same figures, same lines and axes, same table.
    results = {
        source: make_report(logged_both_ways, out_dir=tmp_path / source, source=source)
        for source in ("tensorboard", "csv")
    }
    tb, from_csv_report = results["tensorboard"], results["csv"]
    assert set(tb.figures) == set(from_csv_report.figures) == FIGURES | {"loss", "val_accuracy"}
    for name, figure in tb.drawings.items():
        for ax, csv_ax in zip(figure.axes, from_csv_report.drawings[name].axes, strict=True):
            assert ax.get_xlim() == pytest.approx(csv_ax.get_xlim(), rel=1e-5), name
            assert ax.get_ylim() == pytest.approx(csv_ax.get_ylim(), rel=1e-5), name
            lines, csv_lines = _lines(ax), _lines(csv_ax)
            assert lines.keys() == csv_lines.keys(), name
            for label, line in lines.items():
                assert list(line.get_xdata()) == list(csv_lines[label].get_xdata()), (name, label)
                assert line.get_ydata() == pytest.approx(csv_lines[label].get_ydata(), rel=1e-6), (
                    name,
                    label,
                )
    tb_table, csv_table = _read_csv(tb.table_csv), _read_csv(from_csv_report.table_csv)
    assert tb_table.keys() == csv_table.keys()
    for run, row in tb_table.items():
        _assert_same_numbers(row, csv_table[run], run)
    # Left to choose, a folder holding both is read once (from its event files): no run counted twice.
    auto = make_report(logged_both_ways, out_dir=tmp_path / "auto")
    assert auto.runs == tb.runs and _read_csv(auto.table_csv) == tb_table


def test_first_epoch_of_a_run_ignores_values_logged_before_any_epoch():
    rows = [report.Scalar("b", "x", 0, None, 1.0), report.Scalar("b", "x", 5, 3, 1.0)]
    rows.append(report.Scalar("b", "x", 9, 4, 1.0))
    rows.append(report.Scalar("plain", "x", 0, None, 1.0))
    assert report._first_epochs(rows) == {"b": 3, "plain": None}


# ---- figures that don't mislead (issue 20 item 8), read back from the drawn axes ----------------
def _data_lines(ax):
    """The lines drawn in data coordinates (curves), not the fork line or the zero line."""
    return [line for line in ax.get_lines() if line.get_transform() == ax.transData and len(line.get_xdata())]


def test_panels_comparing_epochs_share_the_x_range_and_the_fork_line(forked_logs, tmp_path):
    figure = make_report(forked_logs, out_dir=tmp_path / "out").drawings["emergence_and_accuracy_change"]
    e_whole, e_zoom, change_whole, change_zoom = figure.axes
    # E starts at epoch 0 and the change in accuracy at epoch 2 (the first epoch with a previous one).
    assert min(_lines(e_whole)["parent"].get_xdata()) == 0
    assert min(_lines(change_whole)["parent"].get_xdata()) == 2
    assert e_whole.get_xlim() == change_whole.get_xlim() and e_whole.get_xlim()[0] < 0
    assert e_zoom.get_xlim() == change_zoom.get_xlim()
    for upper, lower in ((e_whole, change_whole), (e_zoom, change_zoom)):
        fork = [line.get_xdata()[0] for ax in (upper, lower) for line in ax.get_lines()
                if line.get_label().startswith("fork")]  # fmt: skip
        assert fork == [4, 4]
        # Same data x -> same pixel column: the fork line sits at one place in both panels.
        to_pixels = [ax.transData.transform((4, 0))[0] for ax in (upper, lower)]
        assert to_pixels[0] == pytest.approx(to_pixels[1])


def test_every_figure_has_the_same_epoch_axis(branch_logs, tmp_path):
    """E starts at epoch 0, accuracy at 1, the change in accuracy at 2: all drawn on one epoch range."""
    result = make_report(branch_logs, out_dir=tmp_path / "out")
    whole, zoomed = set(), set()
    for name, figure in result.drawings.items():
        for index, ax in enumerate(figure.axes):
            # With a fork every figure but the per-layer grid is (whole run | after the fork) per row.
            is_zoom = name != "active_fraction_per_layer" and index % 2 == 1
            if ax.get_visible():
                (zoomed if is_zoom else whole).add(ax.get_xlim())
    # Whole-run panels: epochs 0 (the parent's E before training) to 5 (the branches' last), padded.
    assert len(whole) == 1 and len(zoomed) == 1
    (low, high), (zoom_low, zoom_high) = whole.pop(), zoomed.pop()
    assert -1 < low < 0 and 5 < high < 6
    assert (zoom_low, zoom_high) == pytest.approx((3 - 0.3, 5 + 0.3))


def test_no_text_overlaps_or_leaves_the_figure(forked_logs, branch_logs, tmp_path):
    for index, logs in enumerate((forked_logs, branch_logs)):
        result = make_report(logs, out_dir=tmp_path / f"out{index}")
        for name, figure in result.drawings.items():
            figure.draw_without_rendering()
            texts = [figure._suptitle] if figure._suptitle is not None else []
            for ax in figure.axes:
                if ax.get_visible():
                    texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
                    texts += ax.get_legend().get_texts() if ax.get_legend() else []
            texts += [t for legend in figure.legends for t in legend.get_texts()]
            boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_visible() and t.get_text()]
            page = figure.bbox
            for text, box in boxes:
                assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (
                    name, text,
                )  # fmt: skip
            for i, (text, box) in enumerate(boxes):
                for other, other_box in boxes[i + 1 :]:
                    assert not box.overlaps(other_box), (name, text, other)


def test_a_validation_accuracy_figure(branch_logs, tmp_path):
    result = make_report(branch_logs, out_dir=tmp_path / "out")
    whole = result.drawings["val_accuracy"].axes[0]
    assert whole.get_ylabel() == "validation accuracy (val_acc)"
    # _write_run logs val_acc = 0.45, 0.55, 0.65 for the parent after epochs 1..3.
    assert list(_lines(whole)["parent"].get_ydata()) == pytest.approx([0.45, 0.55, 0.65])
    assert (
        "val_accuracy" not in make_report(forked_logs_without_val(tmp_path), out_dir=tmp_path / "o2").figures
    )


def forked_logs_without_val(tmp_path):
    root = tmp_path / "no-val"
    _write_values(root, 0, [1000, 800, 600], [0.2, 0.6])
    return root


def test_titles_and_labels_say_which_axis_is_logarithmic(forked_logs, branch_logs, tmp_path):
    narrow = make_report(forked_logs, out_dir=tmp_path / "narrow").drawings["emergence_log"]
    assert [ax.get_yscale() for ax in narrow.axes] == ["linear", "linear"]
    assert "log" not in narrow._suptitle.get_text() and all(
        "log" not in ax.get_ylabel() for ax in narrow.axes
    )
    wide = make_report(branch_logs, out_dir=tmp_path / "wide").drawings["emergence_log"]
    scales = [ax.get_yscale() for ax in wide.axes]
    # E from 8000 to 100 over the whole run: log; after the fork 1000 -> 100... also over 20x? 1000/100 = 10.
    assert scales == ["log", "linear"]
    assert [ax.get_ylabel() for ax in wide.axes] == ["emergence E (log scale)", "emergence E"]
    assert wide._suptitle.get_text() == "Emergence E per epoch, log y axis for the whole run"


def test_every_point_in_a_panels_epoch_range_is_inside_its_y_range(forked_logs, branch_logs, tmp_path):
    for index, logs in enumerate((forked_logs, branch_logs)):
        for name, figure in make_report(logs, out_dir=tmp_path / f"out{index}").drawings.items():
            for ax in figure.axes:
                (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
                for line in _data_lines(ax):
                    x, y = (line.get_xdata().astype(float), line.get_ydata().astype(float))
                    shown = (x >= x_low) & (x <= x_high) & np.isfinite(y)
                    assert shown.any(), (name, line.get_label())
                    assert y_low < y[shown].min() and y[shown].max() < y_high, (name, line.get_label())


def test_per_layer_panels_are_scaled_to_their_data(tmp_path):
    writer = SummaryWriter(str(tmp_path / "run"))
    for epoch, active in enumerate([91, 92, 94, 95]):  # 91 % -> 95 % of 100 nodes active
        step = (epoch + 1) * 10 - 1
        writer.add_scalar("emergence/active/net.2", active, step)
        writer.add_scalar("emergence/dead/net.2", 100 - active, step)
        writer.add_scalar("epoch", epoch, step)
    writer.close()
    (ax,) = [
        ax for ax in make_report(tmp_path).drawings["active_fraction_per_layer"].axes if ax.get_visible()
    ]
    low, high = ax.get_ylim()
    assert 0.85 < low < 0.91 and 0.95 < high < 1.0  # the change fills the panel, not 4 % of a 0-1 axis


def result_legend(logs, tmp_path):
    figure = make_report(logs, out_dir=tmp_path / "legend").drawings["emergence_log"]
    return [text for legend in figure.legends for text in legend.get_texts()]


def test_branch_panels_of_per_layer_shares_share_one_y_range(branch_logs, tmp_path):
    figure = make_report(branch_logs, out_dir=tmp_path / "out").drawings["active_fraction_per_layer"]
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}
    assert set(panels) == {"parent", "control", "pruned-50"}
    assert panels["control"].get_ylim() == panels["pruned-50"].get_ylim()
    assert list(panels)[0] == "parent"  # the parent first (its run, version_0, sorts after branches/)
    labels = [text.get_text() for text in result_legend(branch_logs, tmp_path)]
    assert labels[:3] == ["parent", "control", "pruned-50"]
    # _write_run logs 10 + k active of 20 nodes at its k-th measurement: a branch's shares run
    # 0.50 -> 0.60 (3 measurements), the parent's 0.50 -> 0.65 (4), each panel scaled to its own.
    low, high = panels["control"].get_ylim()
    assert 0.45 < low < 0.5 and 0.6 < high < 0.65
    low, high = panels["parent"].get_ylim()
    assert 0.45 < low < 0.5 and 0.65 < high < 0.7


# ---- CSV tables other than Lightning's: exports of W&B or MLflow runs ----------------------------
def _write_table(path, header, rows):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_an_export_with_one_value_per_row_reads_like_the_loggers_table(tmp_path):
    """MLflow's metric history (one key per row) and CSVLogger's rows give the same scalars."""
    logger = CSVLogger(tmp_path / "lightning", name="", version="run")
    values = {9: (0, 100.0, 0.5), 19: (1, 80.0, 0.7)}  # step -> (epoch, E, train_acc)
    for step, (epoch, e, acc) in values.items():
        logger.log_metrics({"emergence/E": e, "train_acc": acc, "epoch": epoch}, step)
    logger.save()
    rows = [
        [step, *(value if i == k else "" for i in range(3))]
        for step, triple in values.items()
        for k, value in enumerate(triple)
    ]
    _write_table(tmp_path / "export" / "run", ["step", "epoch", "emergence/E", "train_acc"], rows)
    lightning_rows = {(r.tag, r.step, r.epoch, r.value) for r in load_scalars(tmp_path / "lightning")}
    export_rows = {(r.tag, r.step, r.epoch, r.value) for r in load_scalars(tmp_path / "export")}
    assert lightning_rows == export_rows
    assert ("emergence/E", 19, 1, 80.0) in export_rows


def test_a_table_without_a_step_column(tmp_path):
    _write_table(tmp_path / "run", ["_step", "train_acc"], [[0, 0.5]])
    with pytest.raises(
        ValueError, match=r"metrics.csv' has no 'step' column \(its columns: \['_step', 'train_acc'\]\)"
    ):
        make_report(tmp_path)


def test_a_cell_that_is_not_a_number(tmp_path):
    _write_table(tmp_path / "run", ["step", "train_acc"], [[0, 0.5], [1, "n/a"]])
    with pytest.raises(ValueError, match=r"line 3, column 'train_acc': expected a number, got 'n/a'"):
        make_report(tmp_path)


def export_mlflow_run(client, run_id, path):
    """docs/reproduction.md's MLflow export, verbatim: one row per logged value, a `step` column."""
    keys = list(client.get_run(run_id).data.metrics)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *keys])
        writer.writeheader()
        for key in keys:
            for m in client.get_metric_history(run_id, key):
                writer.writerow({"step": m.step, key: m.value})


def test_a_report_from_an_mlflow_export_equals_the_csv_loggers(tmp_path, monkeypatch):
    """One real fit logged to MLflow (file store) and CSV: the exported run gives the CSV run's table."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    store = f"file:{tmp_path / 'mlruns'}"
    mlflow_logger = MLFlowLogger(experiment_name="report", tracking_uri=store)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.rand(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    )
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1,
        logger=[CSVLogger(tmp_path / "csv", name="", version="run"), mlflow_logger],
        callbacks=[EmergenceCallback()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(
        PaperMLP(hidden=(16, 8), lr=0.5), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16)
    )
    (tmp_path / "export" / "run").mkdir(parents=True)
    export_mlflow_run(MlflowClient(store), mlflow_logger.run_id, tmp_path / "export" / "run" / "metrics.csv")
    from_csv = make_report(tmp_path / "csv", out_dir=tmp_path / "a")
    from_mlflow = make_report(tmp_path / "export", out_dir=tmp_path / "b")
    assert set(from_mlflow.figures) == set(from_csv.figures) >= {"emergence_log", "val_accuracy", "loss"}
    csv_row, mlflow_row = _read_csv(from_csv.table_csv)["run"], _read_csv(from_mlflow.table_csv)["run"]
    assert csv_row["epochs"] == mlflow_row["epochs"] == "2"
    _assert_same_numbers(csv_row, mlflow_row, "run")
