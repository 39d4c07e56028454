"""Path-exact emergence: the DP against brute-force enumeration, and edges read from real models."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from helpers.paths import count_paths
from torch import nn
from torch.nn.utils import prune

from emergence_lightning.connectivity import ConnectivityError, build_edges, path_emergence
from emergence_lightning.connectivity.paths import _check_edges, _count_paths
from emergence_lightning.functional import emergence

DESIGN_VECTORS = [
    ((3, 2, 2), (1, 1, 2), 12, 8),
    ((4, 3, 2, 1), (2, 1, 2, 1), 34, 18),
    ((3, 2, 2), (0, 0, 2), 16, 4),
    ((2, 3, 4), (0, 3, 4), 30, 30),
    ((5, 4, 3, 2), (1, 2, 3, 2), 170, 98),
    ((4, 5, 3), (4, 5, 3), 0, 0),
]


# ---- references ------------------------------------------------------------------------------
def masks_for(n: list[int], a: list[int]) -> list[torch.Tensor]:
    """Active masks with ``a_i`` active nodes at random positions."""
    masks = []
    for total, alive in zip(n, a):
        mask = torch.zeros(total, dtype=torch.bool)
        mask[torch.randperm(total)[:alive]] = True
        masks.append(mask)
    return masks


def dense_chain(n: list[int]) -> dict:
    return {(i, i + 1): torch.ones(n[i], n[i + 1]) for i in range(len(n) - 1)}


def random_network(seed: int, layers: int = 5, max_width: int = 4, density: float = 0.5):
    """A random DAG with skip edges and random active nodes."""
    generator = torch.Generator().manual_seed(seed)
    n = torch.randint(1, max_width + 1, (layers,), generator=generator).tolist()
    edges = {}
    for i, j in itertools.combinations(range(layers), 2):
        if j == i + 1 or torch.rand((), generator=generator) < 0.4:
            edges[(i, j)] = (torch.rand(n[i], n[j], generator=generator) < density).to(torch.float32)
    active = [torch.rand(width, generator=generator) < 0.5 for width in n]
    return edges, active


# ---- path_emergence --------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "a", "paper", "induced"), DESIGN_VECTORS)
def test_dense_chain_matches_design_vectors(n, a, paper, induced):
    torch.manual_seed(0)
    active = masks_for(list(n), list(a))
    assert path_emergence(dense_chain(list(n)), active) == paper == emergence(n, a)
    assert path_emergence(dense_chain(list(n)), active, variant="induced") == induced


@pytest.mark.parametrize("variant", ["paper", "induced"])
def test_dense_chain_matches_dense_formula(variant):
    rng = random.Random(1)
    for _ in range(20):
        n = [rng.randint(1, 7) for _ in range(rng.randint(1, 6))]
        a = [rng.randint(0, width) for width in n]
        active = masks_for(n, a)
        assert path_emergence(dense_chain(n), active, variant) == emergence(n, a, variant=variant)


def test_counts_far_beyond_int64_are_exact():
    n = [100] * 40
    a = [50, 10, 99, 1, 100, 0, 77, 60, 5, 100] * 4
    expected = emergence(n, a)
    assert expected > 2**200
    assert path_emergence(dense_chain(n), masks_for(n, a)) == expected
    assert path_emergence(dense_chain(n), masks_for(n, a), "induced") == emergence(n, a, variant="induced")


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("variant", ["paper", "induced"])
def test_random_masked_networks_match_count_paths(seed, variant):
    edges, active = random_network(seed)
    expected = count_paths(edges, active, variant)
    assert path_emergence(edges, active, variant) == expected
    # Tiny primes force several residues and the Chinese-remainder reconstruction.
    blocks = _check_edges(edges, [mask.numel() for mask in active])
    assert _count_paths(blocks, active, variant, prime_bits=8) == expected


def test_sparse_and_integer_edges_are_accepted():
    edges, active = random_network(3, layers=6, max_width=5)
    expected = count_paths(edges, active)
    assert path_emergence({key: value.to_sparse() for key, value in edges.items()}, active) == expected
    assert (
        path_emergence({key: value.to(torch.int64) * 7 for key, value in edges.items()}, active) == expected
    )


def test_skip_edges_add_paths_the_dense_formula_misses():
    n, a = [3, 2, 2], [1, 1, 2]
    active = masks_for(n, a)
    edges = dense_chain(n)
    edges[(0, 2)] = torch.ones(3, 2)  # every node of layer 0 also feeds layer 2 directly
    assert path_emergence(edges, active) == emergence(n, a) + (3 - 1) * 2


def test_empty_network_and_missing_blocks():
    assert path_emergence({}, []) == 0
    assert path_emergence({}, [torch.tensor([False, True]), torch.tensor([True])]) == 0


@pytest.mark.parametrize(
    ("edges", "active", "variant", "error", "match"),
    [
        ({}, [torch.ones(2, dtype=torch.bool)], "dense", ValueError, r"`variant` must be one of .*'dense'"),
        ({}, torch.ones(2, dtype=torch.bool), "paper", TypeError, r"`active` must be a sequence.*Tensor"),
        ({}, [torch.ones(2)], "paper", TypeError, r"`active\[0\]` must be a boolean tensor.*torch.float32"),
        ({}, [[True, False]], "paper", TypeError, r"`active\[0\]` must be a boolean tensor, got list"),
        ({}, [torch.ones(2, 2, dtype=torch.bool)], "paper", ValueError, r"`active\[0\]` must be 1-D.*\(2, 2\)"),
        ([], [], "paper", TypeError, r"`edges` must be a mapping.*list"),
        ({(1, 0): torch.ones(2, 2)}, [torch.ones(2, dtype=torch.bool)] * 2, "paper", ValueError, r"0 <= i < j < 2.*\(1, 0\)"),
        ({(0, 0): torch.ones(2, 2)}, [torch.ones(2, dtype=torch.bool)] * 2, "paper", ValueError, r"got \(0, 0\)"),
        ({(0, 2): torch.ones(2, 2)}, [torch.ones(2, dtype=torch.bool)] * 2, "paper", ValueError, r"got \(0, 2\)"),
        ({0: torch.ones(2, 2)}, [torch.ones(2, dtype=torch.bool)] * 2, "paper", TypeError, r"pairs of layer indices.*got 0"),
        ({(0, 1): [[1]]}, [torch.ones(1, dtype=torch.bool)] * 2, "paper", TypeError, r"`edges\[\(0, 1\)\]` must be a tensor"),
        ({(0, 1): torch.ones(3, 2)}, [torch.ones(2, dtype=torch.bool)] * 2, "paper", ValueError, r"shape \(n_0, n_1\) = \(2, 2\), got \(3, 2\)"),
    ],
)  # fmt: skip
def test_path_emergence_rejects_bad_input(edges, active, variant, error, match):
    with pytest.raises(error, match=match):
        path_emergence(edges, active, variant)


# ---- build_edges: models ---------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, widths=(6, 5, 4, 3), classes=2):
        super().__init__()
        self.fc1, self.relu1 = nn.Linear(widths[0], widths[1]), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(widths[1], widths[2]), nn.ReLU()
        self.fc3, self.relu3 = nn.Linear(widths[2], widths[3]), nn.ReLU()
        self.head = nn.Linear(widths[3], classes)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.head(self.relu3(self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc, self.relu3 = nn.Linear(3 * 3 * 3, 5), nn.ReLU()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        x = self.pool(self.relu2(self.bn2(self.conv2(self.relu1(self.conv1(x))))))
        return self.head(self.relu3(self.fc(torch.flatten(x, 1))))


class ResidualMLP(nn.Module):
    """``h = relu1(fc0(x)); out = relu2(fc2(relu_mid(fc1(h))) + h)``: h reaches relu2 directly."""

    def __init__(self, width=3):
        super().__init__()
        self.fc0, self.relu1 = nn.Linear(2, width), nn.ReLU()
        self.fc1, self.relu_mid = nn.Linear(width, 2), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(2, width), nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.fc0(x))
        return self.relu2(self.fc2(self.relu_mid(self.fc1(h))) + h)


class ResidualConv(nn.Module):
    """``h = relu1(conv0(x)); out = relu2(bn(conv1(h)) + h)`` then a downsampling block with a 1x1 skip."""

    def __init__(self):
        super().__init__()
        self.conv0, self.relu1 = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()
        self.conv1, self.bn, self.relu2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()
        self.conv2, self.relu3 = nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()
        self.conv3, self.skip, self.relu4 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.conv0(x))
        h = self.relu2(self.bn(self.conv1(h)) + h)
        return self.relu4(self.conv3(self.relu3(self.conv2(h))) + self.skip(h))


def conv_pattern(conv: nn.Conv2d) -> torch.Tensor:
    """(in, out): any kernel weight nonzero, computed independently of the module under test."""
    weight = conv.weight.detach()
    return torch.tensor(
        [[bool(weight[q, p].abs().sum() > 0) for q in range(weight.shape[0])] for p in range(weight.shape[1])]
    )


def dense_edges_ok(edges: dict, count: int) -> bool:
    return sorted(edges) == [(i, i + 1) for i in range(count - 1)] and all(m.all() for m in edges.values())


def test_dense_mlp_matches_dense_formula():
    torch.manual_seed(0)
    model = MLP()
    names = ["relu1", "relu2", "relu3"]
    edges = build_edges(model, names, torch.randn(2, 6))
    assert dense_edges_ok(edges, 3)
    assert all(matrix.dtype == torch.bool and matrix.device.type == "cpu" for matrix in edges.values())
    for a in [(2, 1, 3), (0, 4, 0), (5, 4, 3), (1, 0, 2)]:
        active = masks_for([5, 4, 3], list(a))
        for variant in ("paper", "induced"):
            assert path_emergence(edges, active, variant) == emergence([5, 4, 3], a, variant=variant)


def test_dense_cnn_matches_dense_formula():
    torch.manual_seed(0)
    edges = build_edges(CNN(), ["relu1", "relu2", "relu3"], torch.randn(2, 1, 6, 6))
    assert dense_edges_ok(edges, 3)
    assert [tuple(m.shape) for m in edges.values()] == [(4, 3), (3, 5)]
    active = masks_for([4, 3, 5], [1, 2, 3])
    assert path_emergence(edges, active) == emergence([4, 3, 5], [1, 2, 3])


def test_build_edges_keeps_modes_and_running_stats():
    model = CNN().train()
    model.bn2.eval()
    before = model.bn2.running_mean.clone()
    build_edges(model, ["relu1", "relu2"], torch.randn(2, 1, 6, 6))
    assert model.training and not model.bn2.training and model.relu1.training
    assert torch.equal(model.bn2.running_mean, before)


def test_pruned_mlp_count_drops_as_predicted():
    torch.manual_seed(0)
    model = MLP(widths=(6, 4, 3, 2))
    names, n, a = ["relu1", "relu2", "relu3"], [4, 3, 2], [1, 2, 1]
    active = [
        torch.tensor([True, False, False, False]),
        torch.tensor([True, True, False]),
        torch.tensor([False, True]),
    ]
    dense = path_emergence(build_edges(model, names, torch.randn(2, 6)), active)
    assert dense == emergence(n, a)

    # Cut one edge, dead node 1 of relu1 -> active node 0 of relu2. Every path through it starts at
    # that node (layer 1 is the first) and then stops at node 0 or goes on to relu3's one active node.
    mask = torch.ones_like(model.fc2.weight)
    mask[0, 1] = 0
    prune.custom_from_mask(model.fc2, "weight", mask)
    edges = build_edges(model, names, torch.randn(2, 6))
    assert not edges[(0, 1)][1, 0] and edges[(0, 1)].sum() == 4 * 3 - 1
    assert path_emergence(edges, active) == dense - 1 * (1 + a[2])

    # Then cut every input of relu2's active node 1 (pruning masks compose): each of relu1's 3 dead
    # nodes loses its edge into it, and with it 1 + a_3 paths.
    prune.custom_from_mask(model.fc2, "weight", torch.ones(3, 4).index_fill_(0, torch.tensor([1]), 0))
    edges = build_edges(model, names, torch.randn(2, 6))
    assert path_emergence(edges, active) == dense - (1 + a[2]) - 3 * (1 + a[2])
    assert path_emergence(edges, active) == count_paths(edges, active)


def test_hooks_stay_silent_but_pruning_masks_are_refreshed():
    model = MLP()
    prune.identity(model.fc2, "weight")

    def fail(*_):
        raise AssertionError("a measuring hook ran")

    model.relu2.register_forward_hook(fail)
    model.fc2.register_forward_pre_hook(fail)
    with torch.no_grad():
        model.fc2.weight_mask[2, 3] = 0  # no forward pass since: `fc2.weight` is stale until the pre-hook
    edges = build_edges(model, ["relu1", "relu2"], torch.randn(2, 6))
    assert edges[(0, 1)].sum() == 5 * 4 - 1 and not edges[(0, 1)][3, 2]


def test_unstructured_pruning_matches_count_paths():
    torch.manual_seed(1)
    model = MLP(widths=(6, 5, 4, 3))
    for layer in (model.fc2, model.fc3):
        prune.l1_unstructured(layer, "weight", amount=0.6)
    edges = build_edges(model, ["relu1", "relu2", "relu3"], torch.randn(2, 6))
    assert torch.equal(edges[(0, 1)], (model.fc2.weight != 0).t())
    for seed in range(5):
        torch.manual_seed(seed)
        active = [torch.rand(width) < 0.5 for width in (5, 4, 3)]
        for variant in ("paper", "induced"):
            assert path_emergence(edges, active, variant) == count_paths(edges, active, variant)


def test_residual_mlp_has_skip_edges_and_matches_count_paths():
    torch.manual_seed(0)
    model = ResidualMLP()
    prune.random_unstructured(model.fc2, "weight", amount=0.5)
    edges = build_edges(model, ["relu1", "relu_mid", "relu2"], torch.randn(2, 2))
    assert torch.equal(edges[(0, 1)], (model.fc1.weight != 0).t())
    assert torch.equal(edges[(1, 2)], (model.fc2.weight != 0).t())
    assert torch.equal(edges[(0, 2)], torch.eye(3, dtype=torch.bool))  # the skip: node p to node p
    for seed in range(6):
        torch.manual_seed(seed)
        active = [torch.rand(width) < 0.5 for width in (3, 2, 3)]
        for variant in ("paper", "induced"):
            assert path_emergence(edges, active, variant) == count_paths(edges, active, variant)
    # With dense weights the skip adds one path per dead node p of relu1 whose twin p in relu2 is
    # active: here p = 1 (p = 2 is dead in both), so one path more than the dense formula.
    dense_model = ResidualMLP()
    active = [
        torch.tensor([True, False, False]),
        torch.tensor([False, True]),
        torch.tensor([True, True, False]),
    ]
    count = path_emergence(
        build_edges(dense_model, ["relu1", "relu_mid", "relu2"], torch.randn(2, 2)), active
    )
    assert count == emergence([3, 2, 3], [1, 1, 2]) + 1


def test_residual_conv_merges_conv_and_skip_routes():
    torch.manual_seed(0)
    model = ResidualConv()
    for conv in (model.conv1, model.conv3, model.skip):
        prune.random_structured(conv, "weight", amount=0.5, dim=1)  # whole input channels
    prune.random_unstructured(model.conv2, "weight", amount=0.9)
    names = ["relu1", "relu2", "relu3", "relu4"]
    edges = build_edges(model, names, torch.randn(2, 1, 5, 5))
    # relu1 -> relu2 through conv1 (and bn) or the identity skip, merged into one edge set.
    assert torch.equal(edges[(0, 1)], conv_pattern(model.conv1) | torch.eye(3, dtype=torch.bool))
    assert torch.equal(edges[(1, 2)], conv_pattern(model.conv2))
    assert torch.equal(edges[(2, 3)], conv_pattern(model.conv3))
    assert torch.equal(edges[(1, 3)], conv_pattern(model.skip))
    assert (0, 2) not in edges and (0, 3) not in edges
    for seed in range(4):
        torch.manual_seed(seed)
        active = [torch.rand(width) < 0.5 for width in (3, 3, 2, 4)]
        for variant in ("paper", "induced"):
            assert path_emergence(edges, active, variant) == count_paths(edges, active, variant)


def test_residual_without_inner_layer_counts_like_dense_layers():
    # relu2(bn(conv1(relu1)) + relu1): the conv route and the skip merge into one edge set.
    torch.manual_seed(0)
    edges = build_edges(ResidualConv(), ["relu1", "relu2"], torch.randn(2, 1, 5, 5))
    assert sorted(edges) == [(0, 1)] and edges[(0, 1)].all()
    active = [torch.tensor([True, False, False]), torch.tensor([False, True, True])]
    assert path_emergence(edges, active) == emergence([3, 3], [1, 2])


def test_batch_norm_with_zero_scale_cuts_its_channel():
    torch.manual_seed(0)
    model = CNN()
    with torch.no_grad():
        model.bn2.weight[1] = 0
    edges = build_edges(model, ["relu1", "relu2", "relu3"], torch.randn(2, 1, 6, 6))
    assert not edges[(0, 1)][:, 1].any() and edges[(0, 1)][:, [0, 2]].all()


def test_flatten_maps_each_channel_to_its_features():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3), nn.ReLU())
    mask = torch.ones(3, 18)
    mask[:, 9:] = 0  # channel 1 becomes features 9..17
    mask[2, :9] = 0
    prune.custom_from_mask(model[3], "weight", mask)
    edges = build_edges(model, ["1", "4"], torch.randn(2, 1, 5, 5))
    assert edges[(0, 1)].tolist() == [[True, True, False], [False, False, False]]


def test_concatenation_splits_the_next_weights():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.relu_a = nn.Linear(4, 3), nn.ReLU()
            self.b, self.relu_b = nn.Linear(4, 2), nn.ReLU()
            self.fc, self.relu_c = nn.Linear(5, 4), nn.ReLU()

        def forward(self, x):
            return self.relu_c(self.fc(torch.cat([self.relu_a(self.a(x)), self.relu_b(self.b(x))], dim=1)))

    model = Branches()
    prune.random_unstructured(model.fc, "weight", amount=0.5)
    edges = build_edges(model, ["relu_a", "relu_b", "relu_c"], torch.randn(2, 4))
    pattern = (model.fc.weight != 0).t()
    assert torch.equal(edges.get((0, 2), torch.zeros(3, 4, dtype=torch.bool)), pattern[:3])
    assert torch.equal(edges.get((1, 2), torch.zeros(2, 4, dtype=torch.bool)), pattern[3:])
    assert (0, 1) not in edges


def test_pseudo_input_and_output_layers():
    model = MLP()
    edges = build_edges(model, ["model-input", "relu1", "relu3", "model-output"], torch.randn(2, 2, 3))
    # the input of fc1 is the flattened data: 6 nodes; relu3 is reached from relu1 through relu2.
    assert sorted(edges) == [(0, 1), (1, 2), (2, 3)]
    assert [tuple(edges[key].shape) for key in sorted(edges)] == [(6, 5), (5, 3), (3, 2)]


def test_torchvision_resnet18_blocks():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    relus = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
    with pytest.raises(ConnectivityError, match=r"'layer1\.0\.relu' is called 2 times.*own module"):
        build_edges(model, relus, torch.randn(2, 3, 32, 32))
    # Tracking only the stem and the block outputs is fine; every block adds a skip edge.
    names = ["relu", "layer1.0.bn1", "layer1.1.bn1"]
    edges = build_edges(model, names, torch.randn(2, 3, 32, 32))
    assert sorted(edges) == [(0, 1), (0, 2), (1, 2)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])  # fmt: skip
def test_devices_agree(device):
    torch.manual_seed(0)
    model = ResidualConv()
    prune.random_unstructured(model.conv2, "weight", amount=0.7)
    names = ["relu1", "relu2", "relu3", "relu4"]
    expected = build_edges(model, names, torch.randn(2, 1, 5, 5))
    edges = build_edges(model.to(device), names, torch.randn(2, 1, 5, 5, device=device))
    assert sorted(edges) == sorted(expected)
    assert all(edges[key].device.type == "cpu" and torch.equal(edges[key], expected[key]) for key in edges)
    active = [torch.rand(width, device=device) < 0.5 for width in (3, 3, 2, 4)]
    on_device = {key: value.to(device) for key, value in edges.items()}
    assert path_emergence(on_device, active) == count_paths(expected, [mask.cpu() for mask in active])


def test_inside_a_lightning_module():
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU())

        def forward(self, x):
            return self.net(x)

    edges = build_edges(Module(), ["net.2", "net.4"], torch.randn(2, 3, 4))
    assert sorted(edges) == [(0, 1)] and edges[(0, 1)].all()


# ---- build_edges: errors ---------------------------------------------------------------------
class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu = nn.Linear(2, 2), nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:
            return self.relu(self.fc(x))
        return x


class Slicing(nn.Module):
    def __init__(self, slice_before_head: bool = False):
        super().__init__()
        self.slice_before_head = slice_before_head
        self.fc1, self.relu1 = nn.Linear(3, 4), nn.ReLU()
        self.fc2, self.relu2 = nn.Linear(2, 3), nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.fc1(x))
        if self.slice_before_head:
            return h[:, :2]
        return self.relu2(self.fc2(h[:, :2]))


def test_untraceable_model_names_the_way_out():
    with pytest.raises(
        ConnectivityError, match=r"Untraceable could not be traced by torch.fx.*connectivity='dense'"
    ):
        build_edges(Untraceable(), ["relu"], torch.randn(2, 2))


def test_unsupported_operation_between_layers_is_named():
    with pytest.raises(
        ConnectivityError, match=r"into layer 'relu2'.*`_operator\.getitem`.*connectivity='dense'"
    ):
        build_edges(Slicing(), ["relu1", "relu2"], torch.randn(2, 3))
    # after the last tracked layer it doesn't matter
    assert build_edges(Slicing(slice_before_head=True), ["relu1"], torch.randn(2, 3)) == {}


def test_wrong_order_and_uncalled_modules():
    with pytest.raises(ValueError, match=r"forward order.*'relu1' feeds 'relu2'"):
        build_edges(MLP(), ["relu2", "relu1"], torch.randn(2, 6))
    model = MLP()
    model.unused = nn.ReLU()
    with pytest.raises(ValueError, match=r"'unused'.*never called"):
        build_edges(model, ["relu1", "unused"], torch.randn(2, 6))


def test_failing_forward_is_reported_with_its_node():
    with pytest.raises(ConnectivityError, match=r"failed at module 'fc1' \(Linear"):
        build_edges(MLP(), ["relu1"], torch.randn(2, 7))


@pytest.mark.parametrize(
    ("model", "names", "example", "error", "match"),
    [
        ("not a model", ["relu1"], torch.zeros(2, 6), TypeError, r"`model` must be a torch.nn.Module, got str"),
        (MLP(), "relu1", torch.zeros(2, 6), TypeError, r"`layer_names` must be a sequence.*'relu1'"),
        (MLP(), [1], torch.zeros(2, 6), TypeError, r"`layer_names` must hold strings, got 1"),
        (MLP(), ["relu1", "relu1"], torch.zeros(2, 6), ValueError, r"names a layer twice: \['relu1'\]"),
        (MLP(), ["relu9"], torch.zeros(2, 6), ValueError, r"don't exist in MLP: \['relu9'\].*Some valid names: \['fc1'"),
        (MLP(), [""], torch.zeros(2, 6), ValueError, r"don't exist in MLP: \[''\]"),
        (MLP(), ["relu1"], [[0.0] * 6] * 2, TypeError, r"`example_input` must be a tensor.*list"),
        (nn.Sequential(nn.ReLU()), ["model-input"], torch.zeros(2, 6), ValueError, r"'model-input'.*needs a module with parameters"),
    ],
)  # fmt: skip
def test_build_edges_rejects_bad_input(model, names, example, error, match):
    with pytest.raises(error, match=match):
        build_edges(model, names, example)
