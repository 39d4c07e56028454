"""A measuring pass that leaves the run it observes as it found it. Pure, no Lightning.

A forward pass the instrument drives itself (the epoch-0 pass, a probe) must not move anything the
training later reads, or a fit with the instrument is another fit than without it. What it could
move, and how it is put back:

- random states: torch's (CPU and every CUDA device), numpy's and Python's global generators, and
  the generators the loaders own (``DataLoader(generator=g)`` draws its workers' base seed from
  ``g``, and a ``RandomSampler`` its permutation, each time an iterator is created);
- loader iterators and workers: a loader with ``persistent_workers=True`` keeps its first iterator
  (and the worker seeds drawn for it) for the whole run, so the pass iterates a copy of the loader
  instead (:func:`fresh_iteration`);
- module modes, grad mode, and the running statistics of normalisation layers (a step that puts
  a BatchNorm back into training mode would update them).
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy ships with every torch wheel we support
    np = None  # type: ignore[assignment]

__all__ = ["eval_pass", "fresh_iteration", "left_as_found", "loader_generators"]


def loader_generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    """The ``torch.Generator`` objects the loaders own: their own, their sampler's, their batch sampler's."""
    found: dict[int, torch.Generator] = {}
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(loader, "batch_sampler", None)
        inner = getattr(batch_sampler, "sampler", None)
        for owner in (loader, sampler, batch_sampler, inner):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator):
                found[id(generator)] = generator
    return list(found.values())


def fresh_iteration(loader: Any) -> Any:
    """``loader``, or for one with persistent workers a copy whose iteration starts (and ends) its own workers.

    Iterating the loader itself would create the persistent iterator that the training reuses
    (its worker seeds drawn now, at the measurement, instead of at the first training epoch).
    """
    if not (getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0):
        return loader
    twin = copy.copy(loader)  # shares dataset, sampler and generator (whose states are restored)
    # DataLoader refuses attribute writes after __init__; these two are plain instance state.
    vars(twin)["persistent_workers"] = False
    vars(twin)["_iterator"] = None
    return twin


def _norm_statistics(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each normalisation layer's running buffers and a copy of them (small: a few numbers a channel)."""
    saved = []
    for module in model.modules():
        if getattr(module, "track_running_stats", False):
            for buffer in module.buffers(recurse=False):
                saved.append((buffer, buffer.detach().clone()))
    return saved


@contextlib.contextmanager
def left_as_found(model: nn.Module | None = None, loaders: Iterable[Any] = ()) -> Iterator[None]:
    """Puts back, on exit (error included), everything listed in this module's docstring."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state() if np is not None else None
    python_state = random.getstate()
    generators = [(generator, generator.get_state()) for generator in loader_generators(loaders)]
    modes = {module: module.training for module in model.modules()} if model is not None else {}
    statistics = _norm_statistics(model) if model is not None else []
    grad_enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(grad_enabled)
        for module, training in modes.items():
            module.training = training
        with torch.no_grad():
            for buffer, copy_of_it in statistics:
                buffer.copy_(copy_of_it)
        for generator, state in generators:
            generator.set_state(state)
        random.setstate(python_state)
        if numpy_state is not None:
            np.random.set_state(numpy_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_rng_state(torch_state)


@contextlib.contextmanager
def eval_pass(model: nn.Module, loaders: Iterable[Any] = ()) -> Iterator[None]:
    """``model`` in eval mode without gradients, and everything :func:`left_as_found` on exit."""
    with left_as_found(model, loaders), torch.no_grad():
        model.eval()
        yield
