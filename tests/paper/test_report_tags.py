"""`report` on a user's own run: Lightning's tag names (`*_epoch`, `train/acc`, torchmetrics), `--metric`."""

import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from emergence_lightning.branching.monitor import classify, is_accuracy, pick_monitor, role_pattern
from emergence_lightning.callbacks import EmergenceCallback
from emergence_lightning.paper import report
from emergence_lightning.paper.cli import main
from emergence_lightning.paper.report import load_scalars, make_report
from emergence_lightning.paper.report.tags import choose_tags, parse_metrics


@pytest.mark.parametrize(
    ("tag", "role"),
    [
        ("train_acc", "train_acc"),
        ("train_acc_epoch", "train_acc"),
        ("train/acc", "train_acc"),
        ("train/accuracy", "train_acc"),
        ("train_MulticlassAccuracy", "train_acc"),
        ("val_MulticlassAccuracy", "val_acc"),
        ("valid/top1", "val_acc"),
        ("validation_accuracy_epoch", "val_acc"),
        ("train_loss_step", "train_loss"),
        ("val/loss", "val_loss"),
        ("epoch", None),
        ("hp_metric", None),
        ("accuracy", None),  # no stage: ambiguous, left to --metric
        ("lr-SGD", None),
    ],
)
def test_classify(tag, role):
    assert classify(tag) == role


# Tags users log, for the one detector's consumers to agree on.
USER_TAGS = [
    "train_acc", "train_acc_epoch", "train_acc_step", "train/acc", "train/accuracy", "training_accuracy",
    "train_MulticlassAccuracy", "val_MulticlassAccuracy", "valid/top1", "val/top5", "val_acc_best",
    "validation_accuracy_epoch", "val_acc", "val_loss", "val_loss_epoch", "train_loss_step", "train/loss",
    "my_train_acc", "accuracy", "summary/final_val_acc", "hp_metric", "epoch", "lr-SGD", "val_f1",
]  # fmt: skip


@pytest.mark.parametrize("role", ["train_acc", "val_acc", "train_loss", "val_loss"])
def test_dashboard_charts_take_only_what_the_detector_calls_their_role(role):
    """TensorBoard's accuracy and loss charts are the detector's roles, epoch-level, in the usual spelling."""
    pattern = re.compile(role_pattern(role))
    charted = {tag for tag in USER_TAGS if pattern.match(tag)}
    assert charted and all(classify(tag) == role for tag in charted), charted
    # What the chart leaves out of the detector's tags is per-step or unusually spelled, by design.
    left_out = {tag for tag in USER_TAGS if classify(tag) == role} - charted
    assert all(tag.endswith("_step") or tag.startswith(("my_", "val_acc_")) for tag in left_out), left_out


def test_branches_monitor_with_the_same_detector():
    assert pick_monitor(["train_acc", "val/top1", "val_loss"]) == ("val/top1", "max")
    assert pick_monitor(["val_MulticlassAccuracy", "val_loss"]) == ("val_MulticlassAccuracy", "max")
    # The end-of-run summary and EmergenceCallback's own keys are never monitored; *_step ones last.
    assert pick_monitor(["summary/final_val_acc", "emergence/E", "val_loss_step", "val_loss"]) == (
        "val_loss",
        "min",
    )
    assert pick_monitor(["top5", "train_loss"]) == ("top5", "max")  # an accuracy without a stage word
    assert pick_monitor(["val_f1", "train_loss"]) is None
    assert [is_accuracy(t) for t in ("acc5", "val_accuracy", "interval", "val_loss")] == [
        True,
        True,
        False,
        False,
    ]


def test_epoch_level_tags_win_over_step_level():
    tags = ["epoch", "train_acc_step", "train_acc_epoch", "val_acc", "train_loss_step", "train_loss_epoch"]
    assert choose_tags(tags) == {
        "train_acc": "train_acc_epoch",
        "val_acc": "val_acc",
        "train_loss": "train_loss_epoch",
        "val_loss": None,
    }
    # Only per-step values: still better than no figure.
    assert choose_tags(["train_acc_step"])["train_acc"] == "train_acc_step"


def test_end_of_run_summaries_are_never_taken_for_a_curve():
    from emergence_lightning.callbacks.tensorboard_views import SUMMARY

    # Ties on word count with the user's tag and sorts first: it must still not be picked.
    tags = [f"{SUMMARY}/final_val_acc_top1", "val_epoch_acc_top1_mean", f"{SUMMARY}/best_val_loss"]
    assert classify(f"{SUMMARY}/final_val_acc") is None
    assert choose_tags(tags)["val_acc"] == "val_epoch_acc_top1_mean"
    assert choose_tags(tags)["val_loss"] is None


def test_emergence_tags_are_never_taken_for_accuracy():
    tags = ["emergence/train_acc_probe", "val/acc"]
    assert choose_tags(tags, exclude_prefix="emergence") == dict(
        train_acc=None, val_acc="val/acc", train_loss=None, val_loss=None
    )


def test_metrics_override_detection_by_role():
    tags = ["train_acc", "val_acc", "my_score", "val/top5"]
    chosen = choose_tags(tags, metrics=("my_score", "val/top5"))
    assert chosen["train_acc"] == "my_score" and chosen["val_acc"] == "val/top5"
    assert parse_metrics(["a,b", " c ", "a"]) == ("a", "b", "c")
    with pytest.raises(TypeError, match="`metrics` must hold tag strings, got 3"):
        parse_metrics([3])


class _TinyClassifier(pl.LightningModule):
    """Logs like a user's module: `train_acc` per step and epoch, `val_acc` per epoch, no loss."""

    def __init__(self, log_accuracy: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
        self.log_accuracy = log_accuracy

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        if self.log_accuracy:
            self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)  # _step and _epoch
        return nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)  # EmergenceCallback measures on validation batches
        if self.log_accuracy:
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, log_accuracy=True, epochs=3):
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(64, 8), torch.randint(0, 4, (64,)))
    trainer = pl.Trainer(
        max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1,
        logger=TensorBoardLogger(tmp_path, name="fit"), callbacks=[EmergenceCallback()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = DataLoader(data, batch_size=32)
    trainer.fit(_TinyClassifier(log_accuracy), loader, loader)
    return trainer


def test_report_on_a_users_run_with_lightnings_epoch_tags(tmp_path):
    trainer = _fit(tmp_path)
    rows = load_scalars(tmp_path)
    tags = {row.tag for row in rows}
    assert {"train_acc_step", "train_acc_epoch", "val_acc"} <= tags and "train_acc" not in tags
    result = make_report(tmp_path)
    assert result.metric_tags["fit/version_0"] == {
        "train_acc": "train_acc_epoch", "val_acc": "val_acc", "train_loss": None, "val_loss": None,
    }  # fmt: skip
    assert {"train_accuracy", "emergence_and_accuracy_change"} <= set(result.figures)
    assert imread(result.figures["train_accuracy"]).shape[0] > 300
    # The accuracy figure draws the per-epoch values, one per epoch, at epochs 1..3.
    curves = report._run_curves(rows, "emergence", tmp_path.name, chosen={})
    x, y = curves["fit/version_0"]["train_acc"]
    epoch_values = sorted((r.step, r.value) for r in rows if r.tag == "train_acc_epoch")
    assert x.tolist() == [1, 2, 3] and y.tolist() == [value for _, value in epoch_values]
    assert result.skipped == {"loss": result.skipped["loss"]}  # the module logs no loss
    assert "no loss tag in any run" in result.skipped["loss"]
    header, row = (line.split(",") for line in result.table_csv.read_text().splitlines()[:2])
    final_val = float(row[header.index("final_val_acc")])
    assert final_val == pytest.approx(trainer.callback_metrics["val_acc"].item())


def test_run_without_accuracy_skips_the_figures_and_says_why(tmp_path, capsys):
    _fit(tmp_path, log_accuracy=False, epochs=2)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "skipped train_accuracy: no training accuracy tag in any run" in err
    assert "skipped emergence_and_accuracy_change: no training accuracy tag" in err
    pngs = {path.stem for path in (tmp_path / "out").glob("*.png")}
    # No empty accuracy axis anywhere: the E-and-accuracy figure is left out, E's own figures stay.
    assert pngs == {"emergence_log", "relative_emergence", "active_fraction_per_layer"}


def test_hint_names_tags_that_look_like_accuracy(tmp_path):
    writer = SummaryWriter(str(tmp_path / "run"))
    for step, value in enumerate([0.3, 0.5, 0.6]):
        writer.add_scalar("top1_accuracy", value, step)
        writer.add_scalar("score", value / 2, step)
    writer.close()
    result = make_report(tmp_path)
    assert "tags that might be it: ['top1_accuracy']" in result.skipped["train_accuracy"]
    assert "emergence/E" in result.skipped["emergence_log"]


def test_metric_option_picks_the_series(tmp_path, capsys):
    writer = SummaryWriter(str(tmp_path / "run"))
    for step, value in enumerate([0.3, 0.5, 0.6]):
        writer.add_scalar("score", value, step)
        writer.add_scalar("val/score", value - 0.1, step)
    writer.close()
    result = make_report(tmp_path, metrics="score,val/score")
    assert result.metric_tags["run"]["train_acc"] == "score"
    assert result.metric_tags["run"]["val_acc"] == "val/score"
    assert "train_accuracy" in result.figures
    assert main(["report", str(tmp_path), "--metric", "score", "--metric", "val/score"]) == 0
    # run, name, epochs, last epoch, final `score` (training), final and best `val/score`
    assert "| run | run | 2 | 2 | 0.6000 | 0.5000 | 0.5000 |" in capsys.readouterr().out
    with pytest.raises(
        ValueError,
        match=r"`metrics` \(--metric\) tag\(s\) \['nope'\] are in no run .*'score'",
    ):
        make_report(tmp_path, metrics=["nope"])
    assert main(["report", str(tmp_path), "--metric", "nope"]) == 2
    assert "(--metric) tag(s) ['nope']" in capsys.readouterr().err
