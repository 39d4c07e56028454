"""Search spaces of candidate architectures: named spaces of MLPs and CNNs, and user factories.

A candidate is a name and a function that builds a fresh, untrained ``nn.Module`` (so every seed
starts from its own initialisation). Named spaces are seeded, fixed lists:

- ``study``: 72 architectures, MLPs and CNNs of depth 1-6, ReLU/GELU/Tanh, widths 16-512 (MLP)
  and 16-64 channels (CNN; wider convolutions cost too much on a CPU for this study).
- ``quick``: 21 of them (both families, shallow to deep, every activation), for the MNIST 5k variant.
- ``paper``: the paper's MLP 784-128-64-10 alone.

A user factory is ``module:function``; the function takes no argument and returns a mapping
``name -> nn.Module`` or a sequence of modules.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
MLP_WIDTHS = (16, 32, 64, 128, 256, 512)
CNN_WIDTHS = (16, 32, 64)
DEPTHS = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True)
class Architecture:
    """A plain MLP or CNN of constant width.

    MLP: ``Flatten -> (Linear(width) -> act) x depth -> Linear(classes)``.
    CNN: ``Conv4x4/4(width) -> act -> (Conv3x3(width) -> act) x (depth - 1) -> global average pool
    -> Linear(classes)``; the stem has stride 4 and the next two convolutions stride 2
    (28 -> 7 -> 4 -> 2 pixels), the rest stride 1.
    """

    family: str  # "mlp" or "cnn"
    depth: int
    width: int
    activation: str  # a key of ACTIVATIONS

    def __post_init__(self) -> None:
        if self.family not in ("mlp", "cnn"):
            raise ValueError(f"`family` must be 'mlp' or 'cnn', got {self.family!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}.")
        for key in ("depth", "width"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key}` must be a positive int, got {value!r}.")

    @property
    def name(self) -> str:
        return f"{self.family}-d{self.depth}-w{self.width}-{self.activation}"

    def build(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Sequential:
        channels, height, width = input_shape
        act = ACTIVATIONS[self.activation]
        layers: list[nn.Module] = []
        if self.family == "mlp":
            widths = (channels * height * width, *([self.width] * self.depth))
            layers.append(nn.Flatten())
            for fan_in, fan_out in pairwise(widths):
                layers += [nn.Linear(fan_in, fan_out), act()]
        else:
            # A 4x4 stride-4 stem (28 -> 7 pixels), then 3x3 convolutions, the next two of stride 2
            # (7 -> 4 -> 2): deep and wide CNNs stay cheap enough for a CPU study.
            layers += [nn.Conv2d(channels, self.width, 4, stride=4), act()]
            for index in range(1, self.depth):
                stride = 2 if index < 3 else 1
                layers += [nn.Conv2d(self.width, self.width, 3, stride=stride, padding=1), act()]
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers.append(nn.Linear(self.width, num_classes))
        return nn.Sequential(*layers)


@dataclass(frozen=True)
class Candidate:
    """A named architecture: ``build()`` returns a fresh untrained model each call."""

    name: str
    build: Callable[[], nn.Module]
    family: str = "custom"


def study_architectures(widths_per_cell: int = 2, seed: int = 0) -> list[Architecture]:
    """Every (family, depth, activation) cell with ``widths_per_cell`` seeded widths: 72 by default."""
    rng = np.random.default_rng(seed)
    chosen = []
    for family, widths in (("mlp", MLP_WIDTHS), ("cnn", CNN_WIDTHS)):
        for depth in DEPTHS:
            for activation in ACTIVATIONS:
                picks = sorted(
                    rng.choice(widths, size=min(widths_per_cell, len(widths)), replace=False).tolist()
                )
                chosen += [Architecture(family, depth, int(w), activation) for w in picks]
    return chosen


def quick_architectures() -> list[Architecture]:
    """21 architectures: one seeded width per cell at depths 1, 3, 6 (and 2 for CNNs)."""
    chosen = []
    for arch in study_architectures(widths_per_cell=1, seed=1):
        if arch.depth in (1, 3, 6) or (arch.family == "cnn" and arch.depth == 2):
            chosen.append(arch)
    return chosen


def named_space(
    name: str, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10
) -> list[Candidate]:
    """A named search space as candidates (see the module docstring)."""
    if name == "study":
        archs = study_architectures()
    elif name == "quick":
        archs = quick_architectures()
    elif name == "paper":
        paper = Candidate("paper-mlp-784-128-64-10", lambda: _paper_mlp(input_shape, num_classes), "mlp")
        return [paper]
    else:
        raise ValueError(f"`space` must be one of {SPACES}, got {name!r}.")
    return [Candidate(a.name, functools.partial(a.build, input_shape, num_classes), a.family) for a in archs]


SPACES = ("study", "quick", "paper")


def _paper_mlp(input_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * height * width, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def factory_candidates(path: str) -> list[Candidate]:
    """Candidates from ``module:function`` (the function returns ``{name: model}`` or a list of models).

    Each candidate calls the function again when built, so every seed gets fresh weights.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"`factory` must be 'module:function', got {path!r}.")
    module_name, function_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"`factory` {path!r}: cannot import module {module_name!r} ({error}).") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"`factory` {path!r}: module {module_name!r} has no function {function_name!r}.")

    def models() -> dict[str, nn.Module]:
        made = function()
        named = (
            dict(made)
            if isinstance(made, Mapping)
            else {f"{type(m).__name__}-{i}": m for i, m in enumerate(made)}
        )
        bad = {name: type(m).__name__ for name, m in named.items() if not isinstance(m, nn.Module)}
        if bad or not named:
            raise TypeError(
                f"`factory` {path!r} must return a non-empty mapping or list of torch.nn.Module, got {bad or made!r}."
            )
        return named

    names = list(models())
    return [Candidate(name, (lambda name=name: models()[name])) for name in names]  # type: ignore[misc]
