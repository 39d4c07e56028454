"""Every logger gets the whole measurement, the settings, and branch runs of its own: real fits, real files.

CSV ``metrics.csv`` and ``hparams.yaml``, TensorBoard event files, W&B offline run files (read with a
reader of their record format written here, not with our code) and an MLflow file store (read with
MLflow's client). Nothing touches the network: W&B runs offline, MLflow writes ``file:`` URIs.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tb import read_scalars
from tiny_models import Classifier, loaders, mlp

from emergence_lightning import EmergenceCallback, PruneAndBranchCallback

HIDDEN = (16, 12)  # mlp(): Linear(8, 16), ReLU (net.1), Linear(16, 12), ReLU (net.3), Linear(12, 3)
LAYERS = {"net.1": HIDDEN[0], "net.3": HIDDEN[1]}
SCALARS = (
    "emergence/E",
    "emergence/log10_E",
    "emergence/relative",
    "emergence/active_fraction",
    "emergence/epoch",
)
MEASUREMENT_KEYS = {*SCALARS, "epoch"} | {
    f"emergence/{kind}/{layer}" for kind in ("active", "dead") for layer in LAYERS
}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline with its folders in ``tmp_path``; MLflow allowed its file store."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }.items():
        monkeypatch.setenv(key, value)
    yield
    _finish_wandb()  # also after a failure


def _trainer(tmp_path: Path, loggers: list, callbacks: list, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        **kwargs,
    )


def _wandb_loggers(save_dir: Path, **kwargs):
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project="emergence-test", save_dir=str(save_dir), offline=True, **kwargs)


def _mlflow_logger(store: Path):
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name="emergence-test", tracking_uri=f"file:{store}")


# ---- reading W&B's offline run files ---------------------------------------------------------------
def _finish_wandb() -> None:
    """Finishes the parent's run (Lightning leaves it open) and waits for W&B to write every run's file."""
    import wandb

    wandb.finish()
    wandb.teardown()


def wandb_records(path: Path):
    """The records of a ``run-<id>.wandb`` file: a ``:W&B`` header, then LevelDB-log blocks of protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pieces = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces + payload)
            pieces = b""
            yield record
        elif kind in (2, 3):  # first or middle piece
            pieces += payload


def wandb_runs(save_dir: Path) -> dict[str, dict]:
    """Offline runs under ``save_dir``, by run id: the run record, config and history rows."""
    runs = {}
    for path in sorted(save_dir.rglob("run-*.wandb")):
        run, config, history = None, {}, []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
                config.update({item.key: json.loads(item.value_json) for item in run.config.update})
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                history.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
        assert run is not None, path
        runs[run.run_id] = {"run": run, "config": config, "history": history}
    return runs


def _independent_E(row: dict) -> float:
    """E of the two hidden layers from the row's counts: (n1 - a1) * a2 dead-to-active paths (the formula)."""
    return float(row["emergence/dead/net.1"] * row["emergence/active/net.3"])


def _check_measurement_rows(rows: list[dict], measurements: int) -> None:
    assert len(rows) == measurements
    for row in rows:
        assert MEASUREMENT_KEYS <= row.keys()
        for layer, n in LAYERS.items():
            assert row[f"emergence/active/{layer}"] + row[f"emergence/dead/{layer}"] == n
        assert row["emergence/E"] == _independent_E(row)


# ---- one record per measurement, settings in every logger ----------------------------------------
def test_every_logger_gets_each_measurement_as_one_record_and_the_settings(tmp_path, offline):
    from mlflow.tracking import MlflowClient

    train, val = loaders()  # 96 samples, batches of 16: 6 steps an epoch
    emergence = EmergenceCallback(statistic="mean_abs")
    loggers = [
        TensorBoardLogger(str(tmp_path / "tb"), name="", version=""),
        CSVLogger(str(tmp_path / "csv"), name="", version=""),
        _wandb_loggers(tmp_path / "wandb"),
        _mlflow_logger(tmp_path / "mlruns"),
    ]
    trainer = _trainer(tmp_path, loggers, [emergence], enable_checkpointing=False)
    trainer.fit(Classifier(mlp()), train, val)
    wandb_run_id = loggers[2].experiment.id
    _finish_wandb()
    measurements = 3  # before training, after epochs 1 and 2

    # CSV: one row per measurement, with Lightning's epoch and step of the same epoch's val_acc row.
    with open(tmp_path / "csv" / "metrics.csv") as file:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
    measured = [row for row in rows if "emergence/E" in row]
    _check_measurement_rows(measured, measurements)
    validated = [(row["epoch"], row["step"]) for row in rows if "val_acc" in row]
    assert validated == [(0, 5), (1, 11)]  # Lightning's own epoch-end rows
    assert [(row["epoch"], row["step"]) for row in measured] == [(0, 0), *validated]
    assert [row["emergence/epoch"] for row in measured] == [0, 1, 2]
    settings = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert settings["emergence/threshold"] == 0.05 and settings["emergence/source"] == "validation"

    # TensorBoard: every value of a measurement at one step.
    scalars = read_scalars(tmp_path / "tb")
    steps = {key: [step for step, _ in scalars[key]] for key in MEASUREMENT_KEYS - {"epoch"}}
    assert set(map(tuple, steps.values())) == {(0, 5, 11)}

    # W&B: one history step per measurement, the settings in the run's config.
    (run,) = wandb_runs(tmp_path / "wandb").values()
    assert run["run"].run_id == wandb_run_id
    measured = [row for row in run["history"] if "emergence/E" in row]
    _check_measurement_rows(measured, measurements)
    assert [row["trainer/global_step"] for row in measured] == [0, 5, 11]
    assert run["config"]["emergence/threshold"] == 0.05
    assert run["config"]["emergence/statistic"] == "mean_abs"

    # MLflow: every key of a measurement in one batch (same step, same timestamp), the settings as params.
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    run_id = loggers[3].run_id
    history = {
        key: [(m.step, m.timestamp) for m in client.get_metric_history(run_id, key)]
        for key in MEASUREMENT_KEYS
    }
    epochs = set(history.pop("epoch"))  # Lightning's own rows write `epoch` too
    (batches,) = set(map(tuple, history.values()))
    assert set(batches) <= epochs
    assert [step for step, _ in history["emergence/E"]] == [0, 5, 11]
    params = client.get_run(run_id).data.params
    assert params["emergence/threshold"] == "0.05" and params["emergence/source"] == "validation"
    assert [r["E"] for r in emergence.history] == [
        m.value for m in client.get_metric_history(run_id, "emergence/E")
    ]


# ---- branches in the parent's kind of logger -------------------------------------------------------
def test_branches_are_runs_of_their_own_in_wandb_and_mlflow(tmp_path, offline):
    from mlflow.tracking import MlflowClient

    torch.manual_seed(0)
    train, val = loaders()
    wandb_logger = _wandb_loggers(tmp_path / "wandb", group="sweep-1")
    mlflow_logger = _mlflow_logger(tmp_path / "mlruns")
    branching = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    checkpoint = ModelCheckpoint(save_last=True)
    trainer = _trainer(tmp_path, [wandb_logger, mlflow_logger], [EmergenceCallback(), checkpoint, branching])
    trainer.fit(Classifier(mlp()), train, val)
    parent_wandb, parent_mlflow = wandb_logger.experiment.id, mlflow_logger.run_id
    _finish_wandb()
    names = ("control", "pruned-50")
    assert [r["status"] for r in branching.results] == ["finished", "finished"]

    # W&B: a run per branch in the parent's group, job_type "branch", named after the parent, measured.
    runs = wandb_runs(tmp_path / "wandb")
    branches = {run["run"].display_name: run for key, run in runs.items() if key != parent_wandb}
    parent_name = runs[parent_wandb]["run"].display_name or parent_wandb  # offline runs may have no name
    assert sorted(branches) == sorted(f"{parent_name}/{name}" for name in names)
    for run in branches.values():
        assert run["run"].run_group == "sweep-1" and run["run"].job_type == "branch"
        assert run["config"]["branch/parent_run"] == parent_wandb
        # The fork measurement and one epoch-end measurement, each one history step.
        _check_measurement_rows([row for row in run["history"] if "emergence/E" in row], 2)
        assert run["config"]["emergence/threshold"] == 0.05  # the settings, as in the parent's run
        assert "summary/E_end" in {key for row in run["history"] for key in row}

    # MLflow: a run per branch, nested under the parent run, in the parent's experiment.
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("emergence-test")
    found = client.search_runs([experiment.experiment_id])
    children = {run.info.run_name: run for run in found if run.info.run_id != parent_mlflow}
    parent_name = client.get_run(parent_mlflow).info.run_name
    assert sorted(children) == sorted(f"{parent_name}/{name}" for name in names)
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parent_mlflow
        assert run.info.status == "FINISHED"
        assert run.data.params["branch/name"] in names and run.data.params["emergence/threshold"] == "0.05"
        # At the fork (global step 6: the parent's 6 steps), then at the branch's epoch end (Lightning's step 11).
        assert [m.step for m in client.get_metric_history(run.info.run_id, "emergence/E")] == [6, 11]

    # Checkpoints: each branch in a folder of its own.
    for name in names:
        saved = sorted(p.name for p in (Path(branching.branches_dir) / name / "checkpoints").glob("*.ckpt"))
        assert saved == ["epoch=1-step=12.ckpt", "last.ckpt"]


def test_branch_checkpoints_get_folders_of_their_own_without_a_logger(tmp_path):
    torch.manual_seed(0)
    train, val = loaders()
    branching = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    trainer = _trainer(tmp_path, False, [ModelCheckpoint(), branching])
    with pytest.warns(UserWarning, match=r"no logger, so the branches log nothing"):
        trainer.fit(Classifier(mlp()), train, val)
    for name in ("control", "pruned-50"):
        saved = sorted(p.name for p in (tmp_path / "branches" / name / "checkpoints").glob("*.ckpt"))
        assert saved == ["epoch=1-step=12.ckpt"]  # one per branch: no `-v1` of a shared folder
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch=0-step=6.ckpt"
    ]  # the parent's


def test_a_branch_logger_spec_survives_the_saved_fork(tmp_path, monkeypatch):
    """Specs are saved in ``fork.pt``: after pickling, an MLflow spec still nests the branch under the parent."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from emergence_lightning.callbacks.loggers import build_branch_logger, parent_logger_spec

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    parent = _mlflow_logger(tmp_path / "mlruns")
    spec = pickle.loads(pickle.dumps(parent_logger_spec(parent)))
    branch = build_branch_logger(spec, tmp_path / "branches", "pruned-50")
    run = MlflowClient(f"file:{tmp_path / 'mlruns'}").get_run(branch.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert branch.experiment_id == parent.experiment_id


def test_bare_kind_names_of_older_saved_forks_still_build_loggers(tmp_path):
    from emergence_lightning.callbacks.loggers import build_branch_logger

    csv_logger = build_branch_logger("csv", tmp_path, "control")
    assert isinstance(csv_logger, CSVLogger) and Path(csv_logger.log_dir) == tmp_path / "control"
    with pytest.raises(ValueError, match=r"unknown branch logger kind 'comet'; expected one of \['csv', "):
        build_branch_logger("comet", tmp_path, "control")


def test_branches_never_land_in_an_mlflow_store(tmp_path, offline):
    """With MLflow as the first logger, ``trainer.log_dir`` is the store: branches go elsewhere."""
    torch.manual_seed(0)
    train, val = loaders()
    store = tmp_path / "mlruns"
    csv_logger = CSVLogger(tmp_path / "csv")
    branching = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    _trainer(tmp_path, [_mlflow_logger(store), csv_logger], [branching]).fit(Classifier(mlp()), train, val)
    assert [r["status"] for r in branching.results] == ["finished", "finished"]
    assert not (store / "branches").exists()
    assert (Path(csv_logger.log_dir) / "branches" / "control" / "result.json").is_file()  # beside the CSV run

    alone = PruneAndBranchCallback(branch_epoch=1, amounts=(0.5,), verbose=False)
    root = tmp_path / "alone"
    _trainer(root, [_mlflow_logger(root / "mlruns")], [alone]).fit(Classifier(mlp()), train, val)
    assert not (root / "mlruns" / "branches").exists()
    assert (root / "branches" / "pruned-50" / "result.json").is_file()  # under default_root_dir
