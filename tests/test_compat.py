"""The private Lightning, torchmetrics and torch names in emergence_lightning/_compat.py: each exists in
the installed versions (a failure names the one that moved), and no other module reads them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.utils import prune
from torchmetrics import MeanMetric

from emergence_lightning import _compat

PACKAGE = Path(_compat.__file__).parent


@pytest.mark.parametrize("name", _compat.TORCH_NAMES, ids=lambda name: name.qualified)
def test_every_private_torch_name_exists(name):
    try:
        _compat._lookup(name.owner, name.path)
    except (ImportError, AttributeError):
        pytest.fail(f"torch {torch.__version__} moved `{name.qualified}`, needed by {name.used_by}")
    assert name.qualified not in _compat.missing_torch_names()


def _holders():
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return {
        "Trainer": trainer,
        "DDPStrategy": DDPStrategy(),
        "LightningModule": pl.LightningModule(),
        "Metric": MeanMetric(),
    }


@pytest.mark.parametrize(
    ("owner", "path"),
    [(owner, path) for owner, paths in _compat.ATTRIBUTES.items() for path in paths],
    ids=lambda value: value,
)
def test_every_private_lightning_and_torchmetrics_attribute_exists(owner, path):
    missing = _compat.missing_attribute(_holders()[owner], path)
    assert missing is None, f"this Lightning/torchmetrics moved `{owner}.{path}` (`{missing}` is missing)"


def test_the_pruning_hook_names_the_tensor_it_masks():
    layer = nn.Linear(4, 3)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    prune.random_unstructured(layer, "bias", amount=0.5)
    hooks = _compat.forward_pre_hooks(layer)
    assert [_compat.pruned_tensor_name(hook) for hook in hooks] == ["weight", "bias"]
    assert _compat.forward_pre_hooks(nn.Linear(4, 3)) == []


def test_compiled_modules_and_functions_are_recognised():
    def double(x):
        return 2 * x

    compiled_function = torch.compile(double)  # lazy: nothing is compiled until it is called
    assert _compat.is_compiled_function(compiled_function) and not _compat.is_compiled_function(double)
    layer = nn.Linear(2, 2)
    assert not _compat.compiled_in_place(layer)
    layer.compile()
    assert _compat.compiled_in_place(layer)
    wrapped = torch.compile(nn.Linear(2, 2))
    assert isinstance(wrapped, _compat.optimized_module_class())
    assert not isinstance(nn.Linear(2, 2), _compat.optimized_module_class())


def test_the_torch_function_mode_stack_accessors_push_and_pop():
    class Mode(torch.overrides.TorchFunctionMode):
        pass

    mode = Mode()
    with mode:
        assert _compat.current_torch_function_mode() is mode
        assert mode in _compat.torch_function_mode_stack()
        assert _compat.pop_torch_function_mode() is mode
        assert mode not in _compat.torch_function_mode_stack()
        _compat.push_torch_function_mode(mode)  # `with` pops it on exit
    assert mode not in _compat.torch_function_mode_stack()


def test_a_missing_torch_name_fails_when_used_naming_it():
    missing = _compat._resolve("torch.overrides", "_a_name_no_torch_has")
    with pytest.raises(
        RuntimeError, match=r"needs the private `torch\.overrides\._a_name_no_torch_has`, which torch"
    ):
        missing()
    with pytest.raises(RuntimeError, match=r"`torch\.overrides\._a_name_no_torch_has`"):
        missing.relu  # noqa: B018 - attribute access on a namespace that moved


class _MovedLoop:
    """Stands in for a Lightning version whose epoch loop has no `_batches_that_stepped`."""


def test_a_moved_lightning_attribute_fails_naming_it(monkeypatch):
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert _compat.batches_that_stepped(trainer) == 0  # a fresh trainer has stepped no batch
    monkeypatch.setattr(trainer.fit_loop, "epoch_loop", _MovedLoop())
    with pytest.raises(
        RuntimeError,
        match=r"EmergenceCallback reads `Trainer\.fit_loop\.epoch_loop\._batches_that_stepped`, which Lightning "
        r".* \(`_batches_that_stepped` is missing\)",
    ):
        _compat.batches_that_stepped(trainer)


# ---- the fence: no module but _compat reads these names --------------------------------------
#: The last part of every private attribute path _compat lists, and the private torch names.
_FENCED = (
    {
        path.rsplit(".", 1)[-1]
        for paths in _compat.ATTRIBUTES.values()
        for path in paths
        if path.rsplit(".", 1)[-1].startswith("_")
    }
    | {name.path for name in (*_compat.TORCH_NAMES, *_compat.TORCH_ATTRIBUTES)}
    | {"_parameters", "_buffers"}
)
#: callbacks/trainer_factory.py reads the Trainer's and DDPStrategy's listed attributes, checked at setup
#: with _compat.check_attributes; tensorboard_views.py's TensorBoard privates are being replaced (issue 20).
_ALLOWED = {
    "callbacks/trainer_factory.py": {
        part
        for path in (*_compat.TRAINER_ATTRIBUTES, *_compat.DDP_STRATEGY_ATTRIBUTES)
        for part in path.split(".")
    },
}


def _private_reads(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        base = ast.unparse(node.value)
        if base in ("self", "cls"):
            continue
        if node.attr in _FENCED or base.split(".")[0] in ("torch", "lightning", "pl", "torchmetrics"):
            found.append((node.lineno, f"{base}.{node.attr}"))
    return sorted(found)


def test_the_fence_finds_a_private_read():
    source = "import torch\nwith torch._C.DisableTorchFunction():\n    pass\nhooks = m._forward_pre_hooks\nself._x = 1\n"
    assert _private_reads(source) == [(2, "torch._C"), (4, "m._forward_pre_hooks")]


def test_no_module_but_compat_reads_a_private_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "_compat.py" or relative == "callbacks/tensorboard_views.py":
            continue
        allowed = _ALLOWED.get(relative, set())
        for line, name in _private_reads(path.read_text()):
            if name.rsplit(".", 1)[-1] not in allowed:
                offenders.append(f"{relative}:{line}: {name}")
    assert not offenders, "private names read outside emergence_lightning/_compat.py:\n" + "\n".join(
        offenders
    )
