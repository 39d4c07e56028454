"""Which experiment a branch directory belongs to: a record written beside the results, checked on rerun.

No Lightning import. ``<branches>/experiment.json`` holds a fingerprint of the parent's weights at
the fork, of the architecture (class, tensor names, shapes, dtypes) and the settings every branch
shares. A rerun in the same directory resumes only when all three agree; a different experiment
there is refused (:class:`ExperimentMismatchError`, naming the directory and each difference),
never handed the other's results. Which branches run (``amounts``, ``random_controls``) is not
part of it: each branch's own ``result.json`` records its kind and amount.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

EXPERIMENT_FILE = "experiment.json"
RESULT_FILE = "result.json"


class ExperimentMismatchError(ValueError):
    """A branch directory holds the results of another experiment."""


def architecture(module: nn.Module) -> dict[str, Any]:
    """The model's class and a hash of its tensors' names, shapes and dtypes (not their values)."""
    digest = hashlib.sha1()
    for name, value in sorted(module.state_dict().items()):
        # Names as unpruned (a parent with ModelPruning has `weight_orig` and `weight_mask` at the fork).
        if isinstance(value, Tensor) and not name.endswith("_mask"):
            digest.update(f"{name.removesuffix('_orig')}{tuple(value.shape)}{value.dtype};".encode())
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
        raise ExperimentMismatchError(f"{path} cannot be read ({error}); delete it or use another log directory.") from error
    found = differences(recorded, record, weights=weights)
    if found:
        raise ExperimentMismatchError(
            f"{directory} holds the branches of another experiment; its results would be mixed up with this "
            "one's: " + "; ".join(found) + ". Use another log directory (a new logger version) or delete that folder."
        )


def write_experiment(directory: Path, record: Mapping[str, Any], write_text: Any) -> None:
    """Writes ``record`` as ``directory/experiment.json`` with ``write_text(path, text)`` (an atomic writer)."""
    write_text(directory / EXPERIMENT_FILE, json.dumps(dict(record), indent=2, sort_keys=True))
