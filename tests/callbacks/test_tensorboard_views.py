"""Custom-scalars layouts: one quantity per chart, tags matched exactly, as TensorBoard matches them.

TensorBoard's custom-scalars plugin keeps a run's tag for a chart when ``re.match(regex, tag)``
(a prefix match), merges the layouts of all runs by category title, and keeps a run's last layout.
"""

import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tb import read_scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tiny_models import Classifier, loaders, mlp

from emergence_lightning import EmergenceCallback, PruneAndBranchCallback
from emergence_lightning.callbacks.tensorboard_views import (
    TRAIN_ACCURACY,
    VAL_ACCURACY,
    branch_overlay_layout,
    emergence_layout,
    run_hparams,
    summary_metrics,
    write_run_summary,
)


def _regexes(layout):
    return [regex for charts in layout.values() for _, (_, regexes) in charts.items() for regex in regexes]


def _matches(regexes, tags):
    return {tag for tag in tags if any(re.match(regex, tag) for regex in regexes)}


def _last_layout(run_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Category -> chart title -> regexes of the layout TensorBoard uses for a run (its last one)."""
    layouts = []
    for path in sorted(run_dir.glob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(path), size_guidance={"tensors": 0})
        accumulator.Reload()
        if "custom_scalars__config__" in accumulator.Tags()["tensors"]:
            layouts += [event.tensor_proto for event in accumulator.Tensors("custom_scalars__config__")]
    assert layouts, f"no custom-scalars layout in {run_dir}"
    proto = layout_pb2.Layout.FromString(layouts[-1].string_val[0])
    return {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in proto.category}


@pytest.mark.parametrize("path_exact", [False, True])
def test_every_regex_is_anchored(path_exact):
    layouts = [emergence_layout("emergence", path_exact), emergence_layout("em", path_exact, {"net.1": 8})]
    for regex in _regexes(layouts[0]) + _regexes(layouts[1]) + _regexes(branch_overlay_layout("val_f1")):
        assert regex.startswith("^") and regex.endswith("$"), regex


@pytest.mark.parametrize(
    "tag, regex",
    [
        ("train_acc", TRAIN_ACCURACY),
        ("train_acc_epoch", TRAIN_ACCURACY),  # self.log("train_acc", ..., on_epoch=True)
        ("train/acc", TRAIN_ACCURACY),
        ("training_accuracy", TRAIN_ACCURACY),
        ("train_MulticlassAccuracy", TRAIN_ACCURACY),
        ("val_acc", VAL_ACCURACY),
        ("val/top1", VAL_ACCURACY),
        ("validation_accuracy_epoch", VAL_ACCURACY),
    ],
)
def test_accuracy_charts_take_the_names_lightning_writes(tag, regex):
    assert re.match(regex, tag)


@pytest.mark.parametrize(
    "tag",
    ["train_acc_step", "val_acc_step", "summary/final_val_acc", "summary/best_val_acc", "hp_metric",
     "train_loss", "emergence/active_fraction", "val_acc_best", "my_train_acc"],
)  # fmt: skip
def test_accuracy_charts_leave_out_other_tags(tag):
    assert not re.match(TRAIN_ACCURACY, tag) and not re.match(VAL_ACCURACY, tag)


def test_dense_E_chart_does_not_take_the_path_exact_tags():
    layout = emergence_layout("emergence", path_exact=True)
    tags = {"emergence/E", "emergence/E_path", "emergence/log10_E", "emergence/log10_E_path"}
    (regex,) = layout["emergence"]["E: paths from dead to active nodes"][1]
    assert _matches([regex], tags) == {"emergence/E"}


def test_per_layer_charts_name_layers_with_sizes():
    layout = emergence_layout("emergence", False, {"net.1": 128, "net.3": 64})
    assert layout["dead nodes per layer"] == {
        "dead nodes: net.1 (128 nodes)": ["Multiline", [r"^emergence/dead/net\.1$"]],
        "dead nodes: net.3 (64 nodes)": ["Multiline", [r"^emergence/dead/net\.3$"]],
    }
    assert list(layout["active nodes per layer"])[:2] == [
        "active nodes: net.1 (128 nodes)",
        "active nodes: net.3 (64 nodes)",
    ]


def test_another_prefix_gets_its_own_categories():
    layout = emergence_layout("probe", path_exact=False)
    assert {"emergence (probe)", "relative emergence (probe)", "dead nodes per layer (probe)"} <= set(layout)
    assert _matches(_regexes(layout), {"emergence/E", "probe/E"}) == {"probe/E"}


def test_monitored_metric_gets_a_chart_only_when_no_accuracy_or_loss_chart_holds_it():
    assert "monitored metric: val_f1" in branch_overlay_layout("val_f1")["accuracy"]
    assert branch_overlay_layout("val_acc") == branch_overlay_layout(None)


def test_layouts_written_by_a_real_fit_with_branches(tmp_path):
    """Every chart of the runs' layouts holds exactly one quantity; summaries and hp_metric are in none."""
    train, val = loaders()
    trainer = pl.Trainer(
        max_epochs=2, logger=TensorBoardLogger(str(tmp_path), name="", version="parent"),
        callbacks=[
            EmergenceCallback(), PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False),
        ],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(Classifier(mlp(hidden=(16, 12))), train, val)
    runs = [
        tmp_path / "parent",
        tmp_path / "parent" / "branches" / "control",
        tmp_path / "parent" / "branches" / "pruned-50",
    ]
    for run in runs:
        tags = set(read_scalars(run))
        layout = _last_layout(run)
        assert list(layout) == [
            "emergence", "relative emergence", "accuracy", "loss", "dead nodes per layer",
            "active nodes per layer",
        ]  # fmt: skip
        charts = {
            title: _matches(regexes, tags) for charts in layout.values() for title, regexes in charts.items()
        }
        assert charts["E: paths from dead to active nodes"] == {"emergence/E"}
        assert charts["log10 E"] == {"emergence/log10_E"}
        assert charts["Ẽ = E / free parameters"] == {"emergence/relative"}
        assert charts["validation accuracy"] == {"val_acc"}
        assert charts["validation loss"] == {"val_loss"}
        assert charts["training loss"] == {"train_loss"}
        assert charts["training accuracy"] == set()  # Classifier logs no training accuracy
        # mlp(hidden=(16, 12)) has two ReLUs: two layers, 16 and 12 wide. Once measured, the layout is
        # rewritten with one dead-nodes and one active-nodes chart per layer, titled with its width.
        dead_tags = sorted(t for t in tags if t.startswith("emergence/dead/"))
        assert len(dead_tags) == 2
        per_layer = {title: found for title, found in charts.items() if title.startswith("dead nodes: ")}
        assert sorted(per_layer) == [
            f"dead nodes: {tag.removeprefix('emergence/dead/')} ({width} nodes)"
            for tag, width in zip(dead_tags, (16, 12))
        ]
        assert sorted(found for found in per_layer.values()) == [{tag} for tag in dead_tags]
        assert "dead nodes, one line per layer" not in charts
        assert charts["share of active nodes, all layers"] == {"emergence/active_fraction"}
        shown = set().union(*charts.values())
        assert not {t for t in shown if t.startswith("summary/") or t in ("hp_metric", "epoch")}
    assert any(
        t.startswith("summary/") for t in read_scalars(runs[1])
    )  # the summaries exist, just not charted


class _RefusingLogger(CSVLogger):
    """A logger whose backend refuses the summary (as MLflow refuses a param logged twice with new values)."""

    def log_metrics(self, metrics, step=None):
        raise RuntimeError("backend refused the metrics")


def test_a_run_summary_writes_an_hparams_row_with_its_metric_columns_and_survives_a_failing_logger(tmp_path):
    from tensorboard.plugins.hparams import metadata

    tensorboard = TensorBoardLogger(str(tmp_path), name="", version="run", default_hp_metric=False)
    tensorboard.log_hyperparams({"lr": 0.1})  # the model's hyperparameters, at the start of a fit
    refusing = _RefusingLogger(str(tmp_path), name="csv")
    params = run_hparams("pruned-50", 0.5, 1, "l1_unstructured", "finished")
    figures = summary_metrics("val_acc", {"final": 0.8, "best": 0.9, "E_end": 12, "parameters": 100}, False)
    with pytest.warns(
        UserWarning, match=r"could not log the summary of 'pruned-50' to _RefusingLogger: backend"
    ):
        write_run_summary([refusing, tensorboard], step=17, params=params, figures=figures)
    tensorboard.finalize("success")
    accumulator = EventAccumulator(str(tmp_path / "run"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert (
        start.hparams["branch/name"].string_value == "pruned-50" and start.hparams["lr"].number_value == 0.1
    )
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert {info.name.tag for info in experiment.metric_infos} == set(figures)
    scalars = read_scalars(tmp_path / "run")
    assert scalars["summary/E_end"] == [(17, 12.0)] and scalars["summary/best_val_acc"][0][0] == 17
    assert math.isnan(scalars["summary/epochs_to_99"][0][1])  # unknown: NaN, never a made-up value
