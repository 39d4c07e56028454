"""Did ``fast_masks`` earn its complexity? Training steps of a pruned model, with and without it.

A small CNN and a small ViT on CIFAR-shaped random tensors (batch 64, 3x32x32), pruned 50 %
per tensor by magnitude, trained with SGD(momentum): ``torch.nn.utils.prune``'s hooks
(``weight = weight_orig * weight_mask`` every forward pass, what branches use) against the
removed ``fast_masks`` path (masked entries held at zero in a plain weight, gradients masked once
per step; re-created here in a few lines, since the package no longer has it). Plain torch steps,
no Trainer, so only the masking differs. Pairs alternate in one process, one thread; the median
of the repeats is reported. The result decided its removal: see docs/prune-and-branch.md.

    python benchmarks/bench_fast_masks.py [--repeats 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune
from torchvision.models import VisionTransformer

from emergence_lightning.pruning import masks, prune_model


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip


def vit() -> nn.Module:
    return VisionTransformer(
        image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    )


def steps_per_second(make, fast: bool, steps: int, x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(0)
    model = prune_model(make(), 0.5, use_global_unstructured=False)
    pairs = []
    if fast:  # plain weights holding the zeros, and their masks: no hook in the forward pass
        named = dict(model.named_modules())
        for qualified, mask in masks(model).items():
            module_name, _, name = qualified.rpartition(".")
            prune.remove(named[module_name], name)
            pairs.append((getattr(named[module_name], name), mask))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if pairs:  # SGD keeps zeros at zero given masked gradients
            torch._foreach_mul_([p.grad for p, _ in pairs], [m for _, m in pairs])
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    print(
        f"torch {torch.__version__}, 1 thread, batch 64, 3x32x32, 50 % pruned per tensor, {args.steps} steps x {args.repeats}"
    )
    for name, make in (("cnn", cnn), ("vit", vit)):
        rates: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)  # alternate who goes first
            for fast in order:
                rates[fast].append(steps_per_second(make, fast, args.steps, x, y))
        slow, fast = statistics.median(rates[False]), statistics.median(rates[True])
        ratios = sorted(f / s for f, s in zip(rates[True], rates[False]))
        print(
            f"{name}: prune hooks {slow:.2f} steps/s, fast masks {fast:.2f} steps/s, "
            f"speed-up {fast / slow:.3f}x (pairs {ratios[0]:.3f}-{ratios[-1]:.3f})"
        )


if __name__ == "__main__":
    main()
