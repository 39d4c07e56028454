"""The branch directory's files: results, weights, the experiment record, the saved fork; atomic writes.

No Lightning import. Layout of ``<run>/branches/``::

    experiment.json          what experiment the folder belongs to (below)
    fork.pt                  the fork point: what any branch starts from (``emergence-lightning branch``)
    summary.csv, summary.json  every finished branch, rebuilt from the result files after each branch
    <name>/result.json       one branch's result (status, figures, history)
    <name>/final_state_dict.pt  its final weights, pruning made permanent
    <name>/events.out.tfevents*  its TensorBoard run

``experiment.json`` holds a fingerprint of the parent's weights at
the fork, of the architecture (class, tensor names, shapes, dtypes) and the settings every branch
shares. A rerun in the same directory resumes only when all three agree; a different experiment
there is refused (:class:`ExperimentMismatchError`, naming the directory and each difference),
never handed the other's results. Which branches run (``amounts``, ``random_controls``) is not
part of it: each branch's own ``result.json`` records its kind and amount.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from emergence_lightning.branching.plan import PRUNED_KINDS, BranchSpec
from emergence_lightning.pruning.names import MASK, canonical_name

EXPERIMENT_FILE = "experiment.json"
RESULT_FILE = "result.json"
STATE_DICT_FILE = "final_state_dict.pt"
FORK_FILE = "fork.pt"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


class ExperimentMismatchError(ValueError):
    """A branch directory holds the results of another experiment."""


def fingerprint(state_dict: dict[str, Any]) -> str:
    """A short hash of the tensors of a state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha1()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode())
        if isinstance(value, Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            # 1-D first: a 0-dim tensor (BatchNorm's `num_batches_tracked`) cannot be viewed as bytes
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def architecture(module: nn.Module) -> dict[str, Any]:
    """The model's class and a hash of its tensors' names, shapes and dtypes (not their values)."""
    digest = hashlib.sha1()
    for name, value in sorted(module.state_dict().items()):
        # Names as unpruned (a parent with ModelPruning has `weight_orig` and `weight_mask` at the fork).
        if isinstance(value, Tensor) and not name.endswith(MASK):
            digest.update(f"{canonical_name(name)}{tuple(value.shape)}{value.dtype};".encode())
    cls = type(module)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "tensors": digest.hexdigest()[:16]}


def experiment_record(
    fork_weights: str | None, architecture: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """What identifies an experiment: the weights at the fork (``None`` before it), architecture, settings."""
    return {
        "fork_weights": fork_weights,
        "architecture": dict(architecture),
        "settings": json.loads(json.dumps(dict(settings), default=repr)),
    }


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], weights: bool = True) -> list[str]:
    """Human-readable differences between two records (``weights=False`` leaves the fork weights out)."""
    found = []
    if weights and recorded.get("fork_weights") != current.get("fork_weights"):
        found.append(
            f"the parent's weights at the fork differ (fingerprint {recorded.get('fork_weights')} there, "
            f"{current.get('fork_weights')} now: another model, data or seed, or non-deterministic training)"
        )
    for section in ("architecture", "settings"):
        old, new = recorded.get(section) or {}, current.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                found.append(f"{section} `{key}`: {old.get(key)!r} there, {new.get(key)!r} now")
    return found


def check_experiment(directory: Path, record: Mapping[str, Any], weights: bool = True) -> None:
    """Refuses ``directory`` when it holds the results of another experiment than ``record``.

    Raises:
        ExperimentMismatchError: the recorded experiment differs, or results lie there with no record.
    """
    path = directory / EXPERIMENT_FILE
    if not path.is_file():
        if any(directory.glob(f"*/{RESULT_FILE}")):
            raise ExperimentMismatchError(
                f"{directory} holds branch results but no {EXPERIMENT_FILE}, so they cannot be told apart from "
                "another experiment's; use another log directory (a new logger version) or delete that folder."
            )
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExperimentMismatchError(
            f"{path} cannot be read ({error}); delete it or use another log directory."
        ) from error
    found = differences(recorded, record, weights=weights)
    if found:
        raise ExperimentMismatchError(
            f"{directory} holds the branches of another experiment; its results would be mixed up with this "
            "one's: "
            + "; ".join(found)
            + ". Use another log directory (a new logger version) or delete that folder."
        )


def write_experiment(directory: Path, record: Mapping[str, Any]) -> None:
    """Writes ``record`` as ``directory/experiment.json``, atomically."""
    atomic_write_text(directory / EXPERIMENT_FILE, json.dumps(dict(record), indent=2, sort_keys=True))


# ---- branch results ------------------------------------------------------------------------
def read_finished(
    directory: Path, specs: Sequence[BranchSpec], fork_fingerprint: str, fork_epoch: int, pruning_fn: str
) -> dict[str, dict[str, Any]]:
    """Results of the branches in ``specs`` that a previous run from the same fork finished, by name."""
    found: dict[str, dict[str, Any]] = {}
    for spec in specs:
        result = read_result(directory, spec.name)
        same = (
            result is not None
            and result.get("status") == "finished"
            and result.get("kind") == spec.kind
            and result.get("fork_epoch") == fork_epoch
            and math.isclose(float(result.get("amount", -1)), spec.amount)
            and (spec.kind not in PRUNED_KINDS or result.get("pruning_fn") == pruning_fn)
            and result.get("fork_fingerprint") == fork_fingerprint
            and (directory / spec.name / STATE_DICT_FILE).is_file()
        )
        if same and result is not None:
            found[spec.name] = result
    return found


def read_result(directory: Path, name: str) -> dict[str, Any] | None:
    """The ``result.json`` of branch ``name``, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((directory / name / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_result(directory: Path, result: Mapping[str, Any]) -> None:
    """Writes one branch's result as ``<directory>/<name>/result.json``, atomically."""
    atomic_write_text(directory / result["name"] / RESULT_FILE, json.dumps(jsonable(dict(result)), indent=2))


def save_final_weights(directory: Path, name: str, state_dict: Mapping[str, Tensor]) -> Path:
    """Saves a branch's final (permanent) state dict; returns its path."""
    path = directory / name / STATE_DICT_FILE
    atomic_torch_save(dict(state_dict), path)
    return path


def clear_stale_run(run_dir: Path) -> list[Path]:
    """Removes what an unfinished earlier run of this branch left, so TensorBoard shows one run; returns them."""
    stale = [*run_dir.glob("events.out.tfevents*"), run_dir / RESULT_FILE, run_dir / STATE_DICT_FILE]
    removed = [path for path in stale if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def write_summary(
    directory: Path, csv_text: str, results: Sequence[Mapping[str, Any]], header: Mapping[str, Any]
) -> None:
    """Writes ``summary.csv`` (``csv_text``) and ``summary.json`` (``header`` and every result)."""
    atomic_write_text(directory / SUMMARY_CSV, csv_text)
    summary = {**dict(header), "branches": [jsonable(dict(result)) for result in results]}
    atomic_write_text(directory / SUMMARY_JSON, json.dumps(summary, indent=2))


# ---- the saved fork ------------------------------------------------------------------------
def save_fork(directory: Path, package: Mapping[str, Any]) -> Path:
    """Pickles what every branch starts from as ``directory/fork.pt`` (atomically); returns its path."""
    path = directory / FORK_FILE
    atomic_torch_save(dict(package), path)
    return path


def load_fork(directory: Path) -> dict[str, Any]:
    """The package :func:`save_fork` wrote (its classes must be importable here).

    Raises:
        FileNotFoundError: no saved fork in ``directory``.
    """
    path = directory / FORK_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: no fork was saved there. Pass the run directory that holds `branches/` "
            "(or the `branches` folder itself) of a run whose PruneAndBranchCallback reached the fork."
        )
    # Our own file, written by `save_fork`: it holds the model and data objects, not only tensors.
    return torch.load(path, map_location="cpu", weights_only=False)


# ---- files -----------------------------------------------------------------------------------
def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _usual_mode(temporary)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    _usual_mode(temporary)
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _usual_mode(path: str) -> None:
    """The mode ``open`` would give (``mkstemp`` makes files private; jobs of a cluster group read them too)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, tensors as lists, and non-finite floats as JSON can hold them."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Tensor):
        return value.tolist()
    return value
