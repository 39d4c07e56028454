"""One job per branch: a lock file in the branch's folder, taken exclusively, naming its holder.

No Lightning import. ``<branches>/<name>/.lock`` exists while a job trains branch ``name``; a
second job (another ``emergence-lightning branch --name`` of the same branch) is refused with
the holder's pid, host and start time, and touches none of the branch's files.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"


class BranchLockedError(RuntimeError):
    """Another job is training this branch now."""


def acquire_lock(run_dir: Path) -> Path:
    """Takes ``run_dir/.lock`` for this process; returns its path (give it back with :func:`release_lock`).

    The file is created exclusively, so of two jobs starting at once one gets it. A lock left by a
    process of this host that no longer runs (killed) is taken over.

    Raises:
        BranchLockedError: another job holds the branch (the message names its pid, host and start).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            other = _read_lock(path)
            if other is not None and _dead_here(other):
                path.unlink(missing_ok=True)  # its job was killed: nothing writes there any more
                continue
            raise BranchLockedError(
                f"{run_dir.name} is being trained by another job ({_describe(other)}; lock file {path}); "
                "this job leaves it alone. Wait for that job, or delete the lock file if it is gone."
            ) from None
        with os.fdopen(handle, "w") as file:
            json.dump(holder, file)
        return path
    raise BranchLockedError(f"{path} could not be taken; another job keeps taking it.")


def release_lock(path: Path) -> None:
    """Removes a lock :func:`acquire_lock` took, if it is still this process's."""
    holder = _read_lock(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # being written this instant, or not ours to judge: treated as held
    return holder if isinstance(holder, dict) else None


def _dead_here(holder: Mapping[str, Any]) -> bool:
    """Whether the lock's process ran on this host and has ended."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(holder: Mapping[str, Any] | None) -> str:
    if holder is None:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
