"""``measure_activity``: batches read as the callback reads them, and no public name hiding a module."""

import importlib
import importlib.util
import types

import pytest
import torch
from torch import nn

import emergence_lightning
from emergence_lightning.measure import measure_activity


class KeywordNet(nn.Module):
    """Takes keyword inputs as Hugging Face models do; `labels` is accepted and ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.ReLU()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.act(self.fc(input_ids))


def test_pairs_and_dicts_measure_as_the_bare_inputs() -> None:
    torch.manual_seed(0)
    model = KeywordNet()
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    # Independent expectation: the ReLU's mean output per feature, computed by hand.
    expected = (torch.relu(model.fc(x)).mean(0) > 0.05).sum().item()
    bare = measure_activity(model, [x])
    pair = measure_activity(model, [(x, y)])
    as_list = measure_activity(model, [[x, y]])
    as_dict = measure_activity(model, [{"input_ids": x, "labels": y}])
    for result in (bare, pair, as_list, as_dict):
        assert result is not None and result.names == ["act"] and result.n == [6]
        assert result.a == [expected] and result.samples == 5


def test_a_dataloader_of_pairs_is_measured_over_every_sample() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    data = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.zeros(10))
    result = measure_activity(model, torch.utils.data.DataLoader(data, batch_size=4))
    assert result is not None and result.samples == 10 and result.names == ["1"]


def test_a_dict_batch_with_other_keys_is_refused_naming_the_batch() -> None:
    with pytest.raises(TypeError, match=r"Batch 0 of `batches` is a dict with keys \[0\]"):
        measure_activity(KeywordNet(), [{0: torch.randn(2, 4)}])


def test_no_public_name_hides_a_module() -> None:
    assert isinstance(importlib.import_module("emergence_lightning.measure"), types.ModuleType)
    import emergence_lightning.measure as by_path

    assert isinstance(by_path, types.ModuleType)
    for name in emergence_lightning.__all__:
        assert importlib.util.find_spec(f"emergence_lightning.{name}") is None, name
