"""Layer names every logger keeps unchanged, never a real module's name, the same under every wrapper.

Wrappers run here for real where this CPU machine can run them: ``torch.compile`` (a module, a
LightningModule's submodule, the LightningModule itself), Fabric's ``_FabricModule``, torch's DDP
(one gloo process), activation checkpointing's ``CheckpointWrapper``. FSDP1 needs an accelerator,
so its name stripping is checked on a module tree that holds the model under FSDP1's attribute
name. FSDP2 (``fully_shard``) keeps names; tests/callbacks/test_fsdp2.py runs it on 2 processes.
"""

import re

import pytest
import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from tiny_models import Classifier, loaders, mlp, quiet_trainer
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from emergence_lightning import EmergenceCallback
from emergence_lightning.measure import ActivityTracker, measure_activity
from emergence_lightning.measure.compile_guard import EagerWhileMeasuring
from emergence_lightning.measure.layers import qualified_modules

KEPT_BY_EVERY_LOGGER = re.compile(r"[A-Za-z0-9_\-./]+")  # MLflow's rule is the strictest


class Mixed(nn.Module):
    """Every kind of call site: a reused module, functional calls (one twice), the data and logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))  # the same module again: a call site of its own
        x = torch.tanh(self.block(x))
        x = F.relu(x - 0.1)  # a second functional relu in this forward pass
        x = F.relu(x + 0.1)
        return self.head(x)


def names_of(model: nn.Module, **kwargs) -> list[str]:
    result = measure_activity(
        model, [torch.randn(4, 6, generator=torch.Generator().manual_seed(0))], **kwargs
    )
    assert result is not None
    return result.names


def test_every_name_uses_only_characters_every_logger_keeps():
    names = names_of(Mixed(), include_input=True, include_output=True)
    assert names == [
        "model-input",
        "act",
        "act-call2",
        "block.1",
        "tanh-fn",
        "relu-fn",
        "relu-fn-call2",
        "model-output",
    ]
    assert all(KEPT_BY_EVERY_LOGGER.fullmatch(name) for name in names)


class Colliding(nn.Module):
    """Module names that a call site's name would otherwise equal (ModuleDict keys may hold `-`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.act = nn.ReLU()
        self.extra = nn.ModuleDict({"unused": nn.Identity()})
        self.add_module("relu-fn", nn.Identity())
        self.add_module("act-call2", nn.Identity())
        self.add_module("model-output", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc(x))
        return F.relu(self.act(x))


def test_a_call_site_never_takes_a_real_modules_name():
    model = Colliding()
    names = names_of(model, include_output=True)
    modules = {name for name, _ in model.named_modules()}
    assert names == ["act", "act-call2-site", "relu-fn-site", "model-output-site"]
    assert not modules & set(names[1:])
    # A colliding name is a name like any other: it selects its layer.
    assert names_of(model, layers=["act-call2-site"]) == ["act-call2-site"]


def test_names_in_the_old_spelling_select_the_same_layers_with_a_warning():
    with pytest.warns(
        FutureWarning,
        match=r"Layer name 'act#2' uses the spelling of emergence-lightning 0.1; it is now 'act-call2'",
    ):
        assert names_of(Mixed(), layers=["act#2"]) == ["act-call2"]
    with pytest.warns(FutureWarning, match=r"'relu\(\)#2'.*it is now 'relu-fn-call2'"):
        assert names_of(Mixed(), layers=["relu()#2", "tanh-fn"]) == ["tanh-fn", "relu-fn-call2"]
    with pytest.warns(FutureWarning, match=r"'<input>'.*it is now 'model-input'"):
        assert names_of(Mixed(), layers=["<input>"], include_input=True) == ["model-input"]
    with pytest.warns(FutureWarning, match=r"'tanh\(\)'.*it is now 'tanh-fn'"):
        result = measure_activity(Mixed(), [torch.randn(2, 6)], layers=["tanh-fn"], node_dim={"tanh()": 1})
    assert result is not None and result.n == [8]


def test_an_unknown_functional_site_is_refused():
    with pytest.raises(ValueError, match=r"`layers` names modules that don't exist: \['fc1.softmax-fn'\]"):
        ActivityTracker(Mixed(), layers=["fc1.softmax-fn"])


# ---- wrappers ------------------------------------------------------------------------------------


class Wrapper(nn.Module):
    """A stand-in with FSDP1's attribute name (FSDP1 itself needs an accelerator)."""

    def __init__(self, module: nn.Module, attribute: str) -> None:
        super().__init__()
        self.attribute = attribute
        self.add_module(attribute, module)

    def forward(self, *args, **kwargs):
        return getattr(self, self.attribute)(*args, **kwargs)


def fsdp1_tree() -> nn.Module:
    """As FSDP1 wraps with an auto-wrap policy: the root and each block under `_fsdp_wrapped_module`."""
    model = Mixed()
    model.block = Wrapper(model.block, "_fsdp_wrapped_module")
    return Wrapper(model, "_fsdp_wrapped_module")


def same_weights() -> Mixed:
    torch.manual_seed(0)
    return Mixed()


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    assert len(EagerWhileMeasuring.holders) == 0 and EagerWhileMeasuring.stance is None


def test_compiled_module_is_named_as_eager(fresh_dynamo):
    eager = measure_activity(same_weights(), [torch.randn(4, 6, generator=torch.Generator().manual_seed(1))])
    compiled = torch.compile(same_weights(), backend="eager")
    assert any(name.startswith("_orig_mod") for name, _ in compiled.named_modules())
    result = measure_activity(compiled, [torch.randn(4, 6, generator=torch.Generator().manual_seed(1))])
    assert eager is not None and result is not None
    assert result.names == eager.names and result.a == eager.a and result.n == eager.n


def test_fabric_module_is_named_as_eager():
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(same_weights())
    assert any(name.startswith("_forward_module") for name, _ in wrapped.named_modules())
    assert names_of(wrapped) == names_of(same_weights())


def test_ddp_module_is_named_as_eager():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(same_weights())
        assert any(name.startswith("module.") for name, _ in wrapped.named_modules())
        assert names_of(wrapped) == names_of(same_weights())
    finally:
        dist.destroy_process_group()


def test_a_users_own_module_attribute_is_kept():
    # Only DDP-like wrappers drop `module`: a user's submodule of that name is part of the name.
    holder = nn.Module()
    holder.module = mlp()
    holder.forward = holder.module.forward
    assert names_of_mlp(holder) == ["module.1", "module.3"]


def names_of_mlp(model: nn.Module) -> list[str]:
    result = measure_activity(model, [torch.randn(3, 8)])
    assert result is not None
    return result.names


def test_checkpoint_wrapped_and_fsdp1_trees_are_named_as_eager():
    model = same_weights()
    model.block = checkpoint_wrapper(model.block)  # real torch wrapper: `_checkpoint_wrapped_module`
    assert "block._checkpoint_wrapped_module.1" in dict(model.named_modules())
    assert names_of(model) == names_of(same_weights())
    tree = fsdp1_tree()
    assert "_fsdp_wrapped_module.block._fsdp_wrapped_module.1" in dict(tree.named_modules())
    assert names_of(tree) == names_of(same_weights())
    # Wrapper and wrapped share one name, the wrapped module last: `layers=` finds the real one.
    assert dict(qualified_modules(tree))["block"] is tree._fsdp_wrapped_module.block._fsdp_wrapped_module
    assert names_of(tree, layers=["block.1"]) == ["block.1"]
    assert names_of(tree, layers=["block"]) == ["block"]  # one call, not one per wrapper level


def fitted_history(tmp_path, model: nn.Module) -> list[dict]:
    callback = EmergenceCallback()
    train, val = loaders()
    quiet_trainer(tmp_path, [callback], max_epochs=1).fit(model, train, val)
    return [{key: record[key] for key in ("layers", "n", "a", "E")} for record in callback.history]


def classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier(mlp(hidden=(16, 12)), lr=0.1)


@pytest.mark.parametrize("how", ["model.net = torch.compile(model.net)", "fit(torch.compile(model))"])
def test_compiled_lightning_module_logs_the_eager_keys(tmp_path, how, fresh_dynamo):
    expected = fitted_history(tmp_path / "eager", classifier())
    model = classifier()
    if how == "fit(torch.compile(model))":
        model = torch.compile(model, backend="eager")
    else:
        model.net = torch.compile(model.net, backend="eager")
    history = fitted_history(tmp_path / "compiled", model)
    assert history == expected and expected[0]["layers"] == ["net.1", "net.3"]
