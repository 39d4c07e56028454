"""The branch directory's files: results, weights, the experiment record, the saved fork; atomic writes.

No Lightning import. Layout of ``<run>/branches/``::

    experiment.json          what experiment the folder belongs to (below)
    fork.pt                  the fork point: what any branch starts from (``emergence-lightning branch``)
    summary.csv, summary.json  every finished branch, rebuilt from the result files after each branch
    <name>/result.json       one branch's result (status, figures, history, checksum of its weights)
    <name>/final_state_dict.pt  its final weights, pruning made permanent
    <name>/events.out.tfevents*  its TensorBoard run
    <name>/.lock             while a job trains the branch: which job (pid, host, start)

``experiment.json`` holds everything that changes the branches' numbers: a fingerprint of the
parent's weights at the fork, of the architecture (class, tensor names, shapes, dtypes), the
settings every branch shares (the PruneAndBranchCallback's, the EmergenceCallback's, the branch
Trainer's) and the data sizes. A rerun in the same directory resumes only when all agree; a
different experiment there is refused (:class:`ExperimentMismatchError`, naming the directory and
each difference), never handed the other's results. Each ``result.json`` carries the hash of that
record (:func:`experiment_id`), and the summary merges only results of this one. Which branches
run (``amounts``, ``random_controls``) is not part of it: each branch's own ``result.json``
records its kind and amount, so a rerun may add an amount.

Files are verified, never trusted: a result records the sha256 of the weights it points to and
a resume checks it (a corrupt branch is trained again, with a warning naming the file); a
``fork.pt`` or ``result.json`` that cannot be read is an error or warning naming the file; one
job at a time holds a branch (:mod:`.lock`), and no job deletes files of a branch another
job holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from emergence_lightning.branching.plan import PRUNED_KINDS, BranchSpec
from emergence_lightning.branching.result import BranchResult
from emergence_lightning.pruning.names import MASK, canonical_name

EXPERIMENT_FILE = "experiment.json"
RESULT_FILE = "result.json"
#: A TensorBoard run's event files (the branch runs', and what `report` reads).
EVENT_GLOB = "events.out.tfevents*"
STATE_DICT_FILE = "final_state_dict.pt"
FORK_FILE = "fork.pt"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
#: The layout of ``fork.pt``; a fork saved by another layout is refused, naming the file.
FORK_FORMAT = 2


class ExperimentMismatchError(ValueError):
    """A branch directory holds the results of another experiment."""


class CorruptFileError(ValueError):
    """A file of the branch directory cannot be read (truncated, garbage, or written by something else)."""


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
    fork_weights: str | None,
    architecture: Mapping[str, Any],
    settings: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What identifies an experiment: the weights at the fork and the data sizes (``None`` before it), architecture, settings."""
    return {
        "fork_weights": fork_weights,
        "architecture": dict(architecture),
        "settings": _plain(settings),
        "data": _plain(data) if data is not None else None,
    }


def experiment_id(record: Mapping[str, Any]) -> str:
    """A short hash of a complete record (fork weights and data included): each result carries it."""
    text = json.dumps(_plain(record), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], weights: bool = True) -> list[str]:
    """Human-readable differences between two records, one per setting (``weights=False``: before the fork).

    Nested settings are named by their path (``settings `emergence.threshold```). Before the fork
    (``weights=False``) the weights and the data sizes are not known yet and are left out.
    """
    found = []
    if weights and recorded.get("fork_weights") != current.get("fork_weights"):
        found.append(
            f"the parent's weights at the fork differ (fingerprint {recorded.get('fork_weights')} there, "
            f"{current.get('fork_weights')} now: another model, data or seed, or non-deterministic training)"
        )
    sections = ("architecture", "settings", "data") if weights else ("architecture", "settings")
    for section in sections:
        old, new = _flat(recorded.get(section) or {}), _flat(current.get(section) or {})
        for key in sorted(set(old) | set(new)):
            if old.get(key, _MISSING) != new.get(key, _MISSING):
                found.append(f"{section} `{key}`: {_shown(old, key)} there, {_shown(new, key)} now")
    return found


_MISSING = object()


def _shown(values: Mapping[str, Any], key: str) -> str:
    return repr(values[key]) if key in values else "not recorded"


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"emergence": {"threshold": 0.05}}`` as ``{"emergence.threshold": 0.05}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (what ``experiment.json`` reads back): tuples as lists, objects by ``repr``."""
    return json.loads(json.dumps(jsonable(value), default=repr, sort_keys=True))


def data_sizes(loaders: Mapping[str, Any]) -> dict[str, Any]:
    """Samples and batch size of each dataloader (by role and position): the data sizes of an experiment.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> data_sizes({"train": [DataLoader(range(10), batch_size=4)]})
        {'train': [{'samples': 10, 'batch_size': 4, 'drop_last': False}]}
    """
    sizes: dict[str, Any] = {}
    for role, found in loaders.items():
        items = found if isinstance(found, (list, tuple)) else [found] if found is not None else []
        if isinstance(found, Mapping):
            items = list(found.values())
        sizes[role] = [_loader_size(item) for item in items]
    return sizes


def _loader_size(loader: Any) -> dict[str, Any]:
    dataset = getattr(loader, "dataset", None)
    try:
        samples = len(dataset) if dataset is not None else len(loader)
    except TypeError:  # an iterable dataset without a length
        samples = None
    return {
        "samples": samples,
        "batch_size": getattr(loader, "batch_size", None),
        "drop_last": getattr(loader, "drop_last", None),
    }


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
    directory: Path, specs: Sequence[BranchSpec], experiment: str, pruning_fn: str
) -> dict[str, BranchResult]:
    """Results of the branches in ``specs`` that a previous run of experiment ``experiment`` finished, by name.

    A result whose weights file is missing or fails its checksum is not finished: a warning names
    the file, and the branch trains again.
    """
    found: dict[str, BranchResult] = {}
    for spec in specs:
        result = read_result(directory, spec.name, warn=True)
        if result is None:
            continue
        same = (
            result.get("status") == "finished"
            and result.get("kind") == spec.kind
            and math.isclose(float(result.get("amount", -1)), spec.amount)
            and (spec.kind not in PRUNED_KINDS or result.get("pruning_fn") == pruning_fn)
            and result.get("experiment") == experiment
        )
        if same and verified_weights(directory, spec.name, result):
            found[spec.name] = BranchResult.from_dict(result)
    return found


def verified_weights(directory: Path, name: str, result: Mapping[str, Any]) -> bool:
    """Whether branch ``name``'s weights file exists with the checksum its result recorded (else a warning)."""
    path = directory / name / STATE_DICT_FILE
    if not path.is_file():
        warnings.warn(
            f"{path} is missing although {name}'s result says finished; {name} trains again.", stacklevel=2
        )
        return False
    if result.get("state_dict_sha256") != sha256(path):
        warnings.warn(
            f"{path} does not match the checksum its result recorded (truncated, or written by another run); "
            f"{name} trains again.",
            stacklevel=2,
        )
        return False
    return True


def read_result(directory: Path, name: str, warn: bool = False) -> dict[str, Any] | None:
    """The ``result.json`` of branch ``name``, or None when there is none (``warn``: or it cannot be read, named)."""
    path = directory / name / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        if warn:
            warnings.warn(f"{path} cannot be read ({error}); {name} counts as not run.", stacklevel=2)
        return None
    if not isinstance(result, dict) or result.get("name") != name:
        if warn:
            warnings.warn(f"{path} is no result of branch {name!r}; {name} counts as not run.", stacklevel=2)
        return None
    return result


def write_result(directory: Path, result: BranchResult) -> None:
    """Writes one branch's result as ``<directory>/<name>/result.json``, atomically."""
    atomic_write_text(directory / result.name / RESULT_FILE, json.dumps(jsonable(result.to_dict()), indent=2))


def save_final_weights(directory: Path, name: str, state_dict: Mapping[str, Tensor]) -> tuple[Path, str]:
    """Saves a branch's final (permanent) state dict; returns its path and sha256."""
    path = directory / name / STATE_DICT_FILE
    atomic_torch_save(dict(state_dict), path)
    return path, sha256(path)


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clear_stale_run(run_dir: Path) -> list[Path]:
    """Removes what an unfinished earlier run of this branch left, so TensorBoard shows one run; returns them.

    Call it only while holding the branch's lock (:func:`~emergence_lightning.branching.lock.acquire_lock`): the files are then no other job's.
    """
    stale = [*run_dir.glob(EVENT_GLOB), run_dir / RESULT_FILE, run_dir / STATE_DICT_FILE]
    removed = [path for path in stale if path.is_file()]
    for path in removed:
        path.unlink()
    return removed


def write_summary(
    directory: Path, csv_text: str, results: Sequence[BranchResult], header: Mapping[str, Any]
) -> None:
    """Writes ``summary.csv`` (``csv_text``) and ``summary.json`` (``header`` and every result)."""
    atomic_write_text(directory / SUMMARY_CSV, csv_text)
    summary = {**dict(header), "branches": [jsonable(result.to_dict()) for result in results]}
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
        CorruptFileError: ``fork.pt`` cannot be read (named), or its classes cannot be imported here.
    """
    path = directory / FORK_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: no fork was saved there. Pass the run directory that holds `branches/` "
            "(or the `branches` folder itself) of a run whose PruneAndBranchCallback reached the fork."
        )
    try:
        # Our own file, written by `save_fork`: it holds the model and data objects, not only tensors.
        package = torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:
        raise CorruptFileError(
            f"{path} refers to a class this program cannot import ({error}); run the branches from a "
            "program that can import the model, data and callback classes of the run."
        ) from error
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        raise CorruptFileError(
            f"{path} cannot be read ({type(error).__name__}: {error}): truncated or not written by "
            "PruneAndBranchCallback. Rerun the parent to save the fork again."
        ) from error
    if not isinstance(package, dict) or not {"fork", "setup", "experiment"} <= set(package):
        raise CorruptFileError(f"{path} is not a fork saved by PruneAndBranchCallback.")
    if package.get("format") != FORK_FORMAT:
        raise CorruptFileError(
            f"{path} was saved by another version of emergence-lightning (format {package.get('format')!r}, "
            f"this one reads {FORK_FORMAT}); rerun the parent to save the fork again."
        )
    return package


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
