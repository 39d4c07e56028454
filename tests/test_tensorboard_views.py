"""Custom-scalars layouts: one quantity per chart, tags matched exactly, as TensorBoard matches them.

TensorBoard's custom-scalars plugin keeps a run's tag for a chart when ``re.match(regex, tag)``
(a prefix match), merges the layouts of all runs by category title, and keeps a run's last layout.
"""

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
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
