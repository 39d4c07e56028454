"""BranchResult: one branch's result, as ``result.json``, ``summary.json`` and ``PruneAndBranchCallback.results`` hold it.

No Lightning import. A typed record in place of a dict: each field is named once, here. It reads
like the dict it replaced (``result["name"]``, ``result.get("E_end")``) so tables, scripts and the
report read either; :meth:`BranchResult.to_dict` and :meth:`BranchResult.from_dict` convert for JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BranchResult:
    """One branch of a prune-and-branch experiment: what it is, where it started, its figures and files."""

    name: str
    kind: str  # one of plan.KINDS
    amount: float
    pruning_fn: str | None = None  # pruned kinds only
    parameters: int | None = None  # effective (masks respected)
    parameters_dense: int | None = None
    monitor: str | None = None
    mode: str = "max"
    fork_epoch: int | None = None
    fork_fingerprint: str | None = None
    experiment: str | None = None  # the experiment record's id (store.experiment_id)
    log_dir: str | None = None
    # E and E~ at the fork and at the end (exact integers for E); path-exact E with connectivity="weights".
    E_fork: int | None = None
    relative_E_fork: float | None = None
    log10_E_fork: float | None = None
    E_end: int | None = None
    relative_E_end: float | None = None
    log10_E_end: float | None = None
    E_path_fork: int | None = None
    relative_E_path_fork: float | None = None
    E_path_end: int | None = None
    relative_E_path_end: float | None = None
    # The monitored metric (monitor.metric_figures).
    final: float | None = None
    best: float | None = None
    best_epoch: int | None = None
    epochs_to_99: int | None = None
    epochs: int = 0  # branch epochs trained
    setup_s: float | None = None
    wall_time_s: float | None = None
    history: dict[str, Any] = field(default_factory=dict)
    pruned_tensors: list[str] = field(default_factory=list)
    status: str = "not run"  # "finished" or "failed" once it ran
    error: str | None = None
    resumed: bool = False
    state_dict: str | None = None  # path of final_state_dict.pt
    state_dict_sha256: str | None = None

    def update(self, **values: Any) -> None:
        """Sets the named fields (an unknown name is an error, not a silent new key)."""
        unknown = sorted(set(values) - FIELDS)
        if unknown:
            raise KeyError(f"BranchResult has no field {unknown!r}.")
        for key, value in values.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``result.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BranchResult:
        """A result read back from ``result.json`` (keys an older version wrote and this one lacks are left out)."""
        return cls(**{key: value for key, value in data.items() if key in FIELDS})

    def __getitem__(self, key: str) -> Any:
        if key not in FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``result.get("E_end")``, as on the dict this record replaced."""
        return getattr(self, key) if key in FIELDS else default


#: The names of :class:`BranchResult`'s fields.
FIELDS = frozenset(f.name for f in dataclasses.fields(BranchResult))
