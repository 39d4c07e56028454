"""Forward passes the EmergenceCallback drives itself (epoch 0, probe data, a cadence's probe set): the
data they read and the module's own step they run.

The module's ``validation_step`` (else ``training_step`` under automatic optimization, else
``forward`` on the batch's input) runs in eval mode with no gradient, its ``self.log`` muted, and
whatever it changes on the module put back: torchmetrics states and plain attributes (lists of
outputs, counters). No trainer hook runs, so other callbacks see nothing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from emergence_lightning import _compat
from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.measure.batches import batch_input
from emergence_lightning.measure.observer import fresh_iteration, left_as_found

# probe_step(pl_module, batch) runs one forward pass for the measurements the callback drives itself.
ProbeStep = Callable[["pl.LightningModule", Any], Any]


def default_probe_step(pl_module: pl.LightningModule, batch: Any) -> Any:
    """Calls the model on the batch's input: ``batch[0]`` of a tuple/list, the batch itself if a tensor."""
    inputs = batch_input(batch)
    if inputs is None:
        raise TypeError(
            f"EmergenceCallback cannot find the input in a batch of type {type(batch).__name__}, and "
            f"{type(pl_module).__name__} has no `validation_step` (nor a `training_step` under automatic "
            "optimization) to run on it; pass `probe_step=lambda module, batch: module(batch['x'])` (or whatever "
            "feeds your model)."
        )
    return pl_module(inputs)


def module_step(pl_module: pl.LightningModule) -> Callable[[Any, int], Any] | None:
    """The module's own step that runs a batch forward: ``validation_step``, else ``training_step``.

    ``training_step`` only under automatic optimization: a manual one steps its optimizers.
    """
    if is_overridden("validation_step", pl_module):
        step = pl_module.validation_step
    elif is_overridden("training_step", pl_module) and pl_module.automatic_optimization:
        step = pl_module.training_step
    else:
        return None
    takes_loader_index = "dataloader_idx" in inspect.signature(step).parameters
    return (lambda batch, index: step(batch, index, dataloader_idx=0)) if takes_loader_index else step


def run_step(pl_module: pl.LightningModule, batch: Any, batch_idx: int, probe_step: ProbeStep | None) -> None:
    """One forward pass on ``batch``: ``probe_step`` if given, else the module's own step (muted)."""
    if probe_step is not None:
        probe_step(pl_module, batch)
        return
    step = module_step(pl_module)
    if step is None:
        default_probe_step(pl_module, batch)
        return
    with side_effects_undone(pl_module):
        step(batch, batch_idx)


@contextlib.contextmanager
def side_effects_undone(pl_module: pl.LightningModule) -> Iterator[None]:
    """Mutes ``self.log``/``self.log_dict`` and puts back torchmetrics states and plain attributes."""
    attributes = {
        name: (value, _shallow_copy(value))
        for name, value in vars(pl_module).items()
        if not name.startswith("_")
    }
    metrics = [(metric, _metric_state(metric)) for metric in pl_module.modules() if _is_metric(metric)]
    muted = {name: vars(pl_module)[name] for name in ("log", "log_dict") if name in vars(pl_module)}
    pl_module.log = _no_op  # type: ignore[method-assign]
    pl_module.log_dict = _no_op  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in muted:
                setattr(pl_module, name, muted[name])
            else:
                vars(pl_module).pop(name, None)
        for name in [name for name in vars(pl_module) if not name.startswith("_") and name not in attributes]:
            delattr(pl_module, name)  # added by the step
        for name, (value, saved) in attributes.items():
            _restore_contents(value, saved)
            vars(pl_module)[name] = value
        for metric, state in metrics:
            for name, value in state.items():
                setattr(metric, name, value)


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def _shallow_copy(value: Any) -> Any:
    return copy.copy(value) if isinstance(value, (list, dict, set)) else None


def _restore_contents(value: Any, saved: Any) -> None:
    """Puts a container's items back in place (others may hold a reference to it)."""
    if isinstance(value, list):
        value[:] = saved
    elif isinstance(value, (dict, set)):
        value.clear()
        value.update(saved)


def _is_metric(module: Any) -> bool:
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - Lightning depends on torchmetrics
        return False
    return isinstance(module, Metric)


def _metric_state(metric: Any) -> dict[str, Any]:
    """A torchmetrics Metric's accumulated state (copied: updates work in place)."""
    names = [*metric.metric_state, *_compat.METRIC_ATTRIBUTES]
    return {name: copy.deepcopy(getattr(metric, name)) for name in names if hasattr(metric, name)}


def fingerprint(batches: Iterable[Any]) -> str:
    """A checksum of every tensor in ``batches`` (nested tuples, lists and dicts), to recognise a probe set."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                digest.update(str(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            digest.update(repr(value).encode())

    for batch in batches:
        feed(batch)
    return digest.hexdigest()


def probe_data(
    trainer: pl.Trainer, source: str | None, probe_dataloader: Any, probe_batches: int | None
) -> tuple[Iterable[Any], float, int | None]:
    """What a pass of the callback's own reads: the loader, how many of its batches, and the real
    samples among them on this process (a DistributedSampler's padding is not counted).
    """
    loader, limit = state.start_data(trainer, source, probe_dataloader)
    sample_limit = state.real_samples_on_this_rank(state.sampler_of(loader))
    return loader, min(limit, probe_batches or math.inf), sample_limit


def draw_probe_set(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    source: str | None,
    probe_dataloader: Any,
    probe_batches: int,
) -> tuple[Iterable[Any], float, int | None]:
    """A cadence's probe set: the first ``probe_batches`` batches of the data ``source`` names, drawn
    once and kept, with the loaders' random state left as found; returned as :func:`probe_data` does.
    """
    loader, limit, sample_limit = probe_data(trainer, source, probe_dataloader, probe_batches)
    with left_as_found(pl_module, [loader]):
        batches = list(state.take(fresh_iteration(loader), limit))
    return batches, math.inf, sample_limit


class ProbeSet:
    """A cadence's fixed probe set: drawn once per run and kept in memory; at a resume, compared
    with the fingerprint the checkpoint saved (a shuffled loader draws other samples).
    """

    def __init__(self) -> None:
        self.data: tuple[Iterable[Any], float, int | None] | None = None  # as probe_data returns it
        self.resumed: str | None = None  # the fingerprint saved in the resumed checkpoint

    def draw(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        source: str | None,
        probe_dataloader: Any,
        probe_batches: int,
    ) -> bool:
        """Draws the set unless drawn; returns whether it differs from the resumed checkpoint's."""
        if self.data is None:
            self.data = draw_probe_set(trainer, pl_module, source, probe_dataloader, probe_batches)
        changed = self.resumed is not None and fingerprint(self.data[0]) != self.resumed
        self.resumed = None
        return changed

    def fingerprint(self) -> str | None:
        return None if self.data is None else fingerprint(self.data[0])

    def restore(self, saved: str | None) -> None:
        """At a checkpoint's load: the set is drawn again, and compared with ``saved``."""
        self.data, self.resumed = None, saved
