"""The core install has no torchvision or matplotlib: they come with the `paper` extra.

Checked in a real interpreter whose site-packages lack both (links to every other installed
package), not by mocking imports.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAPER_ONLY = ("torchvision", "matplotlib", "mpl_toolkits", "pylab")

CHECK = """
import importlib.util, sys
assert importlib.util.find_spec("torchvision") is None and importlib.util.find_spec("matplotlib") is None
import torch
from emergence_lightning import EmergenceCallback, PruneAndBranchCallback, count_parameters, emergence
import emergence_lightning.paper.cli
print("core ok", count_parameters(torch.nn.Linear(3, 2)), emergence([3, 2], [1, 2]))
try:
    import emergence_lightning.paper.experiments
except ModuleNotFoundError as error:
    print("experiments:", error)
try:
    emergence_lightning.paper.cli._print_report(".")
except ModuleNotFoundError as error:
    print("report:", error)
"""


def test_the_core_imports_without_the_paper_extra(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(PAPER_ONLY):
            (site / entry.name).symlink_to(entry.resolve())
    if not any(site.glob("torch")):
        pytest.skip("torch is not in the interpreter's site-packages")
    done = subprocess.run(
        [sys.executable, "-S", "-c", CHECK],
        capture_output=True, text=True, timeout=300, env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core ok 8 4\n" in done.stdout  # 3*2 + 2 parameters; (3 - 1) dead nodes x 2 active ones
    assert (
        "experiments: The paper's experiments need 'torchvision', which the `paper` extra installs: "
        "pip install 'emergence-lightning[paper]'." in done.stdout
    )
    assert (
        "report: `emergence-lightning report` needs 'matplotlib', which the `paper` extra installs: "
        "pip install 'emergence-lightning[paper]'." in done.stdout
    )
