"""Batches through a model: what a batch feeds it (one rule for the callback's probe passes and
:func:`measure_activity`), and ``measure_activity``, an eval pass over batches measured.

Plain PyTorch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from emergence_lightning.measure.measurement import Measurement
from emergence_lightning.measure.observer import eval_pass, fresh_iteration
from emergence_lightning.measure.tracker import ActivityTracker


def batch_input(batch: Any) -> Tensor | None:
    """The model input of a batch: the batch itself if a tensor, else ``batch[0]``; None if neither."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    return None


def model_call(batch: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments of the model for ``batch`` (the ``index``-th, for errors).

    A dict is keyword arguments (``model(**batch)``); a tensor, or a tuple or list whose first
    element is a tensor, gives :func:`batch_input`; any other object (a ``PackedSequence``, a
    graph) is passed whole, as the model's one input.
    """
    if isinstance(batch, Mapping):
        if not all(isinstance(key, str) for key in batch):
            raise TypeError(
                f"Batch {index} of `batches` is a dict with keys {list(batch)[:6]}; a dict batch is passed as "
                "keyword arguments (`model(**batch)`), so its keys must be strings."
            )
        return (), dict(batch)
    if hasattr(batch, "_fields"):  # a named tuple (PackedSequence) is one input, not (inputs, targets)
        return (batch,), {}
    inputs = batch_input(batch)
    return (batch if inputs is None else inputs,), {}


def measure_activity(
    model: nn.Module, batches: Iterable[object], **tracker_kwargs: object
) -> Measurement | None:
    """Runs ``model`` on ``batches`` in eval mode without gradients and measures it.

    Each batch is read as the callback reads one: a tensor is the input (``model(x)``), a tuple or
    list gives its first element (``(x, y)`` as a DataLoader yields it: ``model(x)``), and a dict
    holds keyword arguments (``model(**batch)``, as Hugging Face models take them). The train/eval
    mode of every module, the random states and the loader's generators are restored afterwards
    (see :mod:`~emergence_lightning.measure.observer`). Keyword arguments go to :class:`ActivityTracker`.
    """
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(
            f"`batches` must be an iterable of model inputs (a DataLoader of tensors, or `[x]` for one batch), "
            f"got {type(batches).__name__}."
        )
    tracker = ActivityTracker(model, **tracker_kwargs)  # type: ignore[arg-type]
    with eval_pass(model, [batches]), tracker:
        for index, batch in enumerate(fresh_iteration(batches)):
            args, kwargs = model_call(batch, index)
            tracker.start_pass()
            model(*args, **kwargs)
    return tracker.compute()
