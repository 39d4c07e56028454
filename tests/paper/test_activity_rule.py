"""The default activity rule and the study that chose it (``reproduce activity-rule``).

- On outputs that are never negative the default rule is the paper's, node for node.
- The study's models are measured with the widths their architectures give, its induced dormant
  nodes output ~0 on every input, and its zeroing sets exactly the named nodes to 0 (checked
  against forward passes written out by hand).
- The command runs end to end on a few digits and writes tables of the expected shape.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json

import pytest
import torch
from torch import nn

from emergence_lightning import EmergenceCallback
from emergence_lightning.measure import ActivityTracker, measure_activity
from emergence_lightning.measure.statistics import DEFAULT_STATISTIC
from emergence_lightning.paper.activity_rule import (
    FAMILIES,
    RULES,
    StudySettings,
    activation_modules,
    dead_nodes,
    evaluate,
    induce_dormancy,
)
from emergence_lightning.paper.activity_rule_report import aggregate, headline_table, read_results
from emergence_lightning.paper.cli import main


def _defaults(target) -> object:
    return inspect.signature(target).parameters["statistic"].default


def test_the_tracker_and_the_callback_share_one_default():
    assert _defaults(ActivityTracker) == _defaults(EmergenceCallback) == DEFAULT_STATISTIC
    assert EmergenceCallback().statistic == DEFAULT_STATISTIC


def _relu_nets() -> list[nn.Module]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU6(), nn.Linear(30, 3))
    cnn = nn.Sequential(nn.Conv2d(2, 24, 3), nn.ReLU(), nn.Conv2d(24, 16, 1), nn.ReLU(), nn.Flatten())
    return [mlp, cnn]


@pytest.mark.parametrize("index", [0, 1], ids=["mlp", "cnn"])
@pytest.mark.parametrize("threshold", [0.02, 0.05, 0.1])
def test_on_relu_outputs_the_default_rule_is_the_papers_node_for_node(index, threshold):
    model = _relu_nets()[index]
    shape = (64, 12) if index == 0 else (16, 2, 6, 6)
    batches = [torch.randn(shape, generator=torch.Generator().manual_seed(k)) * 0.3 for k in range(3)]
    paper = measure_activity(model, batches, statistic="mean", threshold=threshold)
    default = measure_activity(model, batches, statistic=DEFAULT_STATISTIC, threshold=threshold)
    assert 0 < sum(paper.a) < sum(paper.n)  # some nodes on each side of the threshold
    for ours, theirs in zip(default.layers, paper.layers):
        assert torch.equal(ours.active, theirs.active)
        assert torch.equal(ours.activity, theirs.activity)  # bit for bit, not merely close


def test_on_tanh_outputs_mean_abs_sees_the_negative_nodes_the_papers_rule_calls_dead():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
    with torch.no_grad():
        model[0].bias[:16] = -2.0  # outputs near -0.96: strongly driven, mean negative
    x = [torch.randn(128, 8) * 0.1]
    paper, absolute = (
        measure_activity(model, x, statistic="mean"),
        measure_activity(model, x, statistic="mean_abs"),
    )
    assert not paper.layers[0].active[:16].any()
    assert absolute.layers[0].active[:16].all()


# Widths written from the architectures in activity_rule.py.
EXPECTED_WIDTHS = {
    "relu": [256, 128, 64],
    "swiglu": [256, 256],
    "transformer": [64, 64],
    "cnn": [16, 32, 64],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_measured_at_its_architectures_widths(family):
    torch.manual_seed(0)
    model = FAMILIES[family]()
    measured = measure_activity(model, [torch.rand(8, 1, 28, 28)])
    assert measured.n == EXPECTED_WIDTHS.get(family, [256, 128, 64])
    assert set(measured.names) == set(activation_modules(model))
    assert set(dead_nodes(measured, model)) == set(measured.names)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_induced_dormant_nodes_output_about_zero_on_every_input(family):
    torch.manual_seed(1)
    model = FAMILIES[family]()
    dormant = induce_dormancy(model, 0.25, seed=0)
    outputs = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
        for name, module in activation_modules(model).items()
    ]
    with torch.no_grad():
        model(torch.rand(16, 1, 28, 28) * 3)
    for handle in handles:
        handle.remove()
    assert set(dormant) == set(outputs)
    for name, nodes in dormant.items():
        out = outputs[name]
        dim = 1 if out.dim() == 4 else -1
        assert 0 < len(nodes) < out.shape[dim]
        assert out.index_select(dim, nodes).abs().max() < 1e-6, name
        others = torch.ones(out.shape[dim], dtype=torch.bool)
        others[nodes] = False
        assert out.index_select(dim, torch.nonzero(others).flatten()).abs().max() > 1e-3


def test_zeroing_an_mlps_nodes_equals_the_forward_pass_written_out():
    torch.manual_seed(2)
    model = FAMILIES["tanh"]()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    zeroed = {"2": torch.tensor([0, 5, 255]), "6": torch.tensor([3])}
    with torch.no_grad():
        h = x.flatten(1)
        for index in (1, 3, 5):
            h = torch.tanh(h @ model[index].weight.T + model[index].bias)
            if str(index + 1) in zeroed:
                h[:, zeroed[str(index + 1)]] = 0.0
        logits = h @ model[7].weight.T + model[7].bias
    loss, accuracy = evaluate(model, x, y, zeroed)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert evaluate(model, x, y)[0] != pytest.approx(loss, rel=1e-5)  # the zeroing changed something


def test_zeroing_a_cnns_channels_equals_the_forward_pass_written_out():
    torch.manual_seed(3)
    model = FAMILIES["cnn"]()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    zeroed = {"1": torch.tensor([2, 7]), "4": torch.tensor([0, 31]), "8": torch.tensor([10])}
    conv1, conv2, fc, head = model[0], model[3], model[7], model[9]
    with torch.no_grad():
        h = torch.relu(nn.functional.conv2d(x, conv1.weight, conv1.bias, padding=1))
        h[:, [2, 7]] = 0.0
        h = torch.relu(
            nn.functional.conv2d(nn.functional.max_pool2d(h, 2), conv2.weight, conv2.bias, padding=1)
        )
        h[:, [0, 31]] = 0.0
        h = torch.relu(nn.functional.max_pool2d(h, 2).flatten(1) @ fc.weight.T + fc.bias)
        h[:, 10] = 0.0
        logits = h @ head.weight.T + head.bias
    assert evaluate(model, x, y, zeroed)[0] == pytest.approx(
        float(nn.functional.cross_entropy(logits, y)), rel=1e-5
    )


def test_zeroing_a_transformers_hidden_units_equals_the_forward_pass_written_out():
    torch.manual_seed(4)
    model = FAMILIES["transformer"]()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    zeroed = {"blocks.1.act": torch.tensor([1, 63])}  # hidden units: the last dim of (N, tokens, 64)
    block = model.blocks[1]
    with torch.no_grad():
        h = model.blocks[0](model.embed(x.view(-1, 28, 28)) + model.position)
        normed = block.norm1(h)
        h = h + block.attn(normed, normed, normed, need_weights=False)[0]
        hidden = nn.functional.gelu(block.fc1(block.norm2(h)))
        hidden[..., [1, 63]] = 0.0
        logits = model.head(model.norm(h + block.fc2(hidden)).mean(1))
    assert evaluate(model, x, y, zeroed)[0] == pytest.approx(
        float(nn.functional.cross_entropy(logits, y)), rel=1e-5
    )


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match=r"`families` must name some of .*got \('relu', 'swish'\)"):
        StudySettings(families=("relu", "swish"))
    with pytest.raises(ValueError, match="`draws` must be a positive int, got 0"):
        StudySettings(draws=0)
    with pytest.raises(ValueError, match=r"`induced_share` must be in \(0, 1\), got 1.0"):
        StudySettings(induced_share=1.0)


def test_the_command_writes_its_tables_figures_and_checksums(tmp_path, capsys):
    families = ["relu", "tanh"]
    code = main([
        "reproduce", "activity-rule", "--log-dir", str(tmp_path), "--rule-families", ",".join(families),
        "--rule-epochs", "1", "--rule-train-size", "300", "--rule-val-size", "100", "--rule-draws", "2",
    ])  # fmt: skip
    assert code == 0
    out = tmp_path / "activity-rule"
    rules = len(RULES)
    thresholds = sum(len(values) for values in RULES.values())
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(families) * 2 * thresholds  # two conditions
    assert {row["family"] for row in rows} == set(families)
    table = (out / "table.md").read_text()
    sections = table.split("\n## ")
    headline_natural = [line for line in sections[1].splitlines() if line.startswith("| ") and "`" in line]
    headline_induced = [line for line in sections[2].splitlines() if line.startswith("| ") and "`" in line]
    sweep = [line for line in sections[4].splitlines() if line.startswith("| ") and "`" in line]
    assert len(headline_natural) == len(headline_induced) == len(families) * rules
    assert len(sweep) == len(families) * thresholds
    assert all(line.count("|") == 9 for line in headline_natural + sweep)
    # every induced dormant node is output ~0, so every rule finds all of them (25 % of 448)
    assert all("| 112 / 112 |" in line for line in headline_induced)
    assert "Supported by this run" in sections[3] or "No rule meets" in sections[3]
    for figure in ("activity-rule-cost.png", "activity-rule-sweep.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the tables can be redrawn from results.csv alone, to the same text
    assert headline_table(aggregate(read_results(out / "results.csv")), "natural") in table
    record = json.loads((out / "settings.json").read_text())
    assert record["settings"]["families"] == families
    for name, digest in record["checksums"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert "activity-rule finished" in capsys.readouterr().out


def test_the_command_refuses_an_unknown_family(tmp_path, capsys):
    code = main(["reproduce", "activity-rule", "--log-dir", str(tmp_path), "--rule-families", "relu,swish"])
    assert code == 2
    assert "`families` must name some of" in capsys.readouterr().err


def test_dormancy_names_an_activation_without_a_producer():
    # A ReLU first: no Linear/Conv before it whose rows could be zeroed.
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.ReLU())
    with pytest.raises(RuntimeError, match=r"activation '0' has no Linear or Conv2d before it"):
        induce_dormancy(model, 0.25, seed=0)
