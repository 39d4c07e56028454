"""What a batch feeds the model: one rule for the callback's probe passes and ``measure_activity``.

Plain PyTorch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


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
