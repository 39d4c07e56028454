"""The study behind the default activity rule: do the nodes a rule calls dead matter?

``emergence-lightning reproduce activity-rule``. Per activation family (MLPs 784-256-128-64-10
with ReLU, LeakyReLU, GELU, SiLU, tanh and sigmoid; a SwiGLU MLP as in Llama; a small GELU
transformer over image rows; a ReLU CNN), a model is trained briefly on MNIST 5k and measured
with each rule (``statistic`` x threshold). The nodes a rule calls dead are then zeroed (their
activation outputs set to 0) and the validation loss compared with zeroing as many random nodes
of the same layers (several draws). A rule whose dead nodes matter as much as random ones is
calling live nodes dead.

The same model is studied twice: as trained ("natural") and with induced dormancy ("induced"):
a seeded share of every measured layer's nodes made truly dormant by zeroing the producing
Linear/Conv row and setting its bias where the activation outputs ~0 (0, or -20 for sigmoid), so
their output is ~0 on every input. A rule should call all of them dead, at no cost.

Plain PyTorch training (Lightning is not what this study tests); the measurements are the
project's :func:`~emergence_lightning.measure.measure`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from emergence_lightning.functional import emergence, log10_emergence
from emergence_lightning.measure import Measurement, measure_activity
from emergence_lightning.paper.predictor.study_data import StudyData, load_study_data

# Each rule is a statistic and its thresholds: theta for the mean rules, ReDo's tau for its score.
RULES: dict[str, tuple[float, ...]] = {
    "mean": (0.01, 0.02, 0.05, 0.1, 0.2),
    "mean_abs": (0.01, 0.02, 0.05, 0.1, 0.2),
    "normalized_mean_abs": (0.025, 0.05, 0.1, 0.2),
}
HEADLINE_THRESHOLD = 0.05  # the library's default threshold: what a user gets by naming a statistic
CONDITIONS = ("natural", "induced")


class GatedMLP(nn.Module):
    """Llama's SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.act = nn.SiLU()
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class SwiGLUNet(nn.Module):
    """Image -> 128 features -> two residual SwiGLU blocks (256 hidden units each) -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(784, 128)
        self.blocks = nn.ModuleList([GatedMLP(128, 256) for _ in range(2)])
        self.head = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class Block(nn.Module):
    """A pre-norm transformer block with a GELU MLP (d=32, 4 heads, 64 hidden units)."""

    def __init__(self, width: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class RowTransformer(nn.Module):
    """The 28 image rows as tokens of 28 pixels, two GELU blocks, mean-pooled into 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(28, 32)
        self.position = nn.Parameter(torch.zeros(1, 28, 32))
        self.blocks = nn.Sequential(Block(), Block())
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.embed(x.view(-1, 28, 28)) + self.position)
        return self.head(self.norm(h).mean(1))


def _mlp(activation: Callable[[], nn.Module]) -> nn.Module:
    widths = (784, 256, 128, 64)
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: _mlp(nn.ReLU),
    "leaky_relu": lambda: _mlp(nn.LeakyReLU),
    "gelu": lambda: _mlp(nn.GELU),
    "silu": lambda: _mlp(nn.SiLU),
    "tanh": lambda: _mlp(nn.Tanh),
    "sigmoid": lambda: _mlp(nn.Sigmoid),
    "swiglu": SwiGLUNet,
    "transformer": RowTransformer,
    "cnn": _cnn,
}
# Families whose every measured output is never negative: there a rule must equal the paper's.
NON_NEGATIVE_FAMILIES = ("relu", "cnn", "sigmoid")


@dataclass(frozen=True)
class StudySettings:
    """Everything that changes the study's numbers."""

    families: tuple[str, ...] = tuple(FAMILIES)
    seeds: int = 1
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3  # Adam
    draws: int = 5  # random draws of as many nodes, per rule and threshold
    induced_share: float = 0.25  # of every measured layer's nodes made dormant
    train_size: int | None = None  # None: all 4,000 training digits
    val_size: int | None = None  # None: all 1,000 validation digits

    def __post_init__(self) -> None:
        unknown = [family for family in self.families if family not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"`families` must name some of {tuple(FAMILIES)}, got {self.families!r}.")
        for key in ("seeds", "epochs", "batch_size", "draws"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{key}` must be a positive int, got {value!r}.")
        if not 0 < self.induced_share < 1:
            raise ValueError(f"`induced_share` must be in (0, 1), got {self.induced_share!r}.")
        for key in ("train_size", "val_size"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{key}` must be a positive int or None, got {value!r}.")

    def key(self) -> dict[str, Any]:
        return asdict(self)


def study_data(settings: StudySettings) -> StudyData:
    """MNIST 5k's training and validation splits, each a seeded subset when a size is set."""
    data = load_study_data("mnist5k", train_size=settings.train_size)
    if settings.val_size is not None:
        if settings.val_size > len(data.x_val):
            raise ValueError(f"`val_size` must be at most {len(data.x_val)}, got {settings.val_size}.")
        keep = torch.randperm(len(data.x_val), generator=torch.Generator().manual_seed(0))[
            : settings.val_size
        ]
        data.x_val, data.y_val = data.x_val[keep], data.y_val[keep]
    return data


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The measured layers' modules by the names the tracker gives them (each called once)."""
    kinds = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)
    return {name: module for name, module in model.named_modules() if isinstance(module, kinds)}


def _producers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """Each activation module's producer: the Linear/Conv registered just before it (a gate in SwiGLU)."""
    activations = activation_modules(model)
    producers: dict[str, nn.Linear | nn.Conv2d] = {}
    last: nn.Linear | nn.Conv2d | None = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not name.endswith(".up"):
            last = module
        elif name in activations:
            if last is None:
                raise RuntimeError(f"activation {name!r} has no Linear or Conv2d before it to make dormant")
            producers[name] = last
    return producers


def node_dim(output: Tensor) -> int:
    """A conv output's channels (dim 1), else the last dim: the tracker's rule for these producers."""
    return 1 if output.dim() == 4 else output.dim() - 1


def induce_dormancy(model: nn.Module, share: float, seed: int) -> dict[str, Tensor]:
    """Makes ``share`` of every measured layer's nodes output ~0 on every input; returns them per layer.

    The producing row's weights are zeroed and its bias set where the activation is ~0: 0 for
    every family here but sigmoid (-20: sigmoid(-20) = 2e-9).
    """
    generator = torch.Generator().manual_seed(seed)
    dormant = {}
    with torch.no_grad():
        for name, producer in _producers(model).items():
            activation = activation_modules(model)[name]
            zero = 0.0 if abs(float(activation(torch.zeros(1)))) < 1e-6 else -20.0
            nodes = producer.weight.shape[0]
            chosen = torch.randperm(nodes, generator=generator)[: max(1, round(share * nodes))].sort().values
            producer.weight[chosen] = 0.0
            if producer.bias is not None:
                producer.bias[chosen] = zero
            elif zero != 0.0:
                raise ValueError(f"layer {name!r}: no bias to move the activation to its zero.")
            dormant[name] = chosen
    return dormant


def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, zeroed: dict[str, Tensor] | None = None
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy), with the nodes in ``zeroed`` (layer -> indices) set to 0."""
    modules = activation_modules(model)

    def zero(indices: Tensor) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            return output.index_fill(node_dim(output), indices, 0.0)

        return hook

    handles = [
        modules[name].register_forward_hook(zero(idx)) for name, idx in (zeroed or {}).items() if len(idx)
    ]
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(chunk) for chunk in x.split(500)])
    finally:
        for handle in handles:
            handle.remove()
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train(family: str, data: StudyData, settings: StudySettings, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(settings.epochs):
        model.train()
        for index in torch.randperm(len(data.x_train), generator=order).split(settings.batch_size):
            loss = nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def dead_nodes(measurement: Measurement, model: nn.Module) -> dict[str, Tensor]:
    """Indices of the inactive nodes per layer.

    Raises:
        RuntimeError: a measured layer is not one of the model's activation modules, or its node
            count is not its producer's width (the zeroing would hit other nodes than were measured).
    """
    producers = _producers(model)
    widths = {name: producer.weight.shape[0] for name, producer in producers.items()}
    measured = dict(zip(measurement.names, measurement.n))
    if measured != widths:
        raise RuntimeError(f"measured layers and widths {measured} are not the model's activations {widths}")
    return {layer.name: torch.nonzero(~layer.active).flatten() for layer in measurement.layers}


def _random_like(
    dead: dict[str, Tensor], sizes: dict[str, int], generator: torch.Generator
) -> dict[str, Tensor]:
    return {name: torch.randperm(sizes[name], generator=generator)[: len(idx)] for name, idx in dead.items()}


def study_model(
    model: nn.Module, data: StudyData, settings: StudySettings, seed: int, dormant: dict[str, Tensor]
) -> list[dict[str, Any]]:
    """One row per rule and threshold: dead nodes, E, and the cost of zeroing them vs random nodes."""
    x, y = data.x_val, data.y_val
    base_loss, base_acc = evaluate(model, x, y)
    rows = []
    paper_active: dict[float, list[Tensor]] = {}
    for statistic, thresholds in RULES.items():
        for threshold in thresholds:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                measured = measure_activity(model, x.split(500), statistic=statistic, threshold=threshold)
            if measured is None:
                raise RuntimeError("the validation split is empty")
            active = [layer.active for layer in measured.layers]
            if statistic == "mean":
                paper_active[threshold] = active
            dead = dead_nodes(measured, model)
            sizes = dict(zip(measured.names, measured.n))
            loss, acc = evaluate(model, x, y, dead)
            generator = torch.Generator().manual_seed(seed * 1000 + round(threshold * 1000))
            random_losses = [
                evaluate(model, x, y, _random_like(dead, sizes, generator))[0] for _ in range(settings.draws)
            ]
            random_deltas = torch.tensor(random_losses, dtype=torch.float64) - base_loss
            same = paper_active.get(threshold)
            rows.append({
                "statistic": statistic, "threshold": threshold, "nodes": sum(measured.n),
                "dead": sum(measured.n) - sum(measured.a), "dead_share": 1 - measured.active_fraction,
                "log10_E": log10_emergence(emergence(measured.n, measured.a)),
                "base_loss": base_loss, "base_acc": base_acc, "zeroed_acc": acc,
                "delta_dead": loss - base_loss, "delta_random": float(random_deltas.mean()),
                "delta_random_sd": float(random_deltas.std()) if settings.draws > 1 else 0.0,
                "induced": sum(len(idx) for idx in dormant.values()),
                "induced_found": sum(int(torch.isin(idx, dead[name]).sum()) for name, idx in dormant.items()),
                "same_as_paper": None if same is None else all(torch.equal(a, b) for a, b in zip(active, same)),
                "warnings": sorted({str(w.message)[:160] for w in caught}),
            })  # fmt: skip
    return rows


def run_study(
    data: StudyData, settings: StudySettings, progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Every family, seed and condition; returns the rows (a family's rows share its trained model)."""
    rows = []
    for family in settings.families:
        for seed in range(settings.seeds):
            started = time.perf_counter()
            trained = train(family, data, settings, seed)
            for condition in CONDITIONS:
                model = copy.deepcopy(trained)
                dormant = (
                    induce_dormancy(model, settings.induced_share, seed) if condition == "induced" else {}
                )
                for row in study_model(model, data, settings, seed, dormant):
                    rows.append({"family": family, "seed": seed, "condition": condition, **row})
            progress(f"activity-rule: {family} seed {seed} done in {time.perf_counter() - started:.1f} s")
    return rows


def cost_ratio(row: dict[str, Any]) -> float:
    """Loss increase from zeroing the dead nodes over that from as many random nodes (NaN: none dead)."""
    if row["dead"] == 0 or not row["delta_random"] > 0:
        return math.nan
    return row["delta_dead"] / row["delta_random"]
