"""Time path-exact emergence on a ResNet-18-sized graph, and edge extraction from torchvision's resnet18.

Run: ``python benchmarks/bench_path_emergence.py [--repeats 7]``. CPU only; prints medians.

The synthetic graph is ResNet-18's tracked layers: the stem ReLU, then for each of the 8 basic
blocks a mid ReLU and an output ReLU (17 layers of 64..512 channels). Each block has dense edges
input -> mid -> output and a skip input -> output (the identity, or a dense 1x1 downsample at the
stage transitions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from emergence_lightning.connectivity import build_edges, path_emergence
from emergence_lightning.functional import emergence


def resnet18_graph(keep: float = 1.0, seed: int = 0) -> tuple[dict, list[int]]:
    """Edges of ResNet-18's ReLU graph; ``keep < 1`` drops edges at random (unstructured pruning)."""
    generator = torch.Generator().manual_seed(seed)

    def block(rows: int, cols: int) -> torch.Tensor:
        return torch.rand(rows, cols, generator=generator) < keep

    sizes, edges = [64], {}
    previous = 0
    for channels in (64, 128, 256, 512):
        for _ in range(2):
            mid, out = len(sizes), len(sizes) + 1
            sizes += [channels, channels]
            edges[(previous, mid)] = block(sizes[previous], channels)
            edges[(mid, out)] = block(channels, channels)
            if sizes[previous] == channels:
                edges[(previous, out)] = torch.eye(channels, dtype=torch.bool)
            else:
                edges[(previous, out)] = block(sizes[previous], channels)
            previous = out
    return edges, sizes


def median_time(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: prime caches, allocator, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unshared_resnet18() -> tuple[nn.Module, list[str]]:
    """torchvision's resnet18 with a second ReLU module per block (the original calls one twice)."""
    import torchvision
    from torchvision.models.resnet import BasicBlock

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + identity)

    model = torchvision.models.resnet18()
    names = ["relu"]
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            module.relu_out = nn.ReLU(inplace=True)
            module.forward = types.MethodType(forward, module)
            names += [f"{name}.relu", f"{name}.relu_out"]
    return model, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.2f}"
    )

    # Small blocks gain nothing from intra-op threads, and on a busy machine the thread pool's
    # waiting dominates: time both the default thread count and a single thread.
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        for keep, label in ((1.0, "dense weights"), (0.5, "50% of edges pruned")):
            edges, sizes = resnet18_graph(keep)
            generator = torch.Generator().manual_seed(1)
            active = [torch.rand(width, generator=generator) < 0.5 for width in sizes]
            count = path_emergence(edges, active)
            seconds = median_time(partial(path_emergence, edges, active), args.repeats)
            induced = median_time(partial(path_emergence, edges, active, "induced"), args.repeats)
            dense = emergence(sizes, [int(mask.sum()) for mask in active])
            print(
                f"[{threads} thread(s)] path_emergence, ResNet-18 graph ({len(sizes)} layers, {len(edges)} "
                f"edge blocks, {label}): {seconds * 1e3:.1f} ms (induced {induced * 1e3:.1f} ms), "
                f"E = {float(count):.3e} ({len(str(count))} digits); dense formula {float(dense):.3e}"
            )
    torch.set_num_threads(default_threads)

    # Beyond ResNet-18: a wide MLP, where converting the blocks to float64 dominates.
    edges = {(i, i + 1): torch.rand(4096, 4096) < 0.5 for i in range(7)}
    active = [torch.rand(4096) < 0.5 for _ in range(8)]
    seconds = median_time(partial(path_emergence, edges, active), max(3, args.repeats // 2))
    print(f"path_emergence, MLP of 8 layers x 4096 nodes, 50% of edges: {seconds * 1e3:.1f} ms")
    del edges

    # A VGG-style head: 512 channels flattened to 25088 features feeding a 4096-wide Linear.
    vgg = nn.Sequential(
        nn.Conv2d(3, 512, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 10),
    )  # fmt: skip
    example = torch.randn(2, 3, 16, 16)
    seconds = median_time(partial(build_edges, vgg, ["1", "5"], example), 3)
    print(f"build_edges, conv(512) -> flatten(25088) -> Linear(4096): {seconds * 1e3:.1f} ms")
    del vgg

    try:
        model, names = unshared_resnet18()
    except ImportError:
        print("torchvision not installed: build_edges on resnet18 skipped")
        return
    for side in (224, 32):
        example = torch.randn(2, 3, side, side)
        edges = build_edges(model, names, example)
        seconds = median_time(partial(build_edges, model, names, example), max(3, args.repeats // 2))
        print(
            f"build_edges, torchvision resnet18 (ReLUs unshared, {len(names)} layers, {len(edges)} edge blocks, "
            f"input 2x3x{side}x{side}): {seconds * 1e3:.1f} ms"
        )
    sizes = {i: matrix.shape[0] for (i, _), matrix in edges.items()}
    sizes.update({j: matrix.shape[1] for (_, j), matrix in edges.items()})
    active = [torch.rand(sizes[k]) < 0.5 for k in range(len(names))]
    seconds = median_time(partial(path_emergence, edges, active), args.repeats)
    print(
        f"path_emergence on those edges: {seconds * 1e3:.1f} ms, E = {float(path_emergence(edges, active)):.3e}"
    )


if __name__ == "__main__":
    main()
