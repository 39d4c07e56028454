"""The paper's models: shapes, one real short Trainer fit each, argument checks."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from emergence_lightning.paper.models import PaperCNN, PaperMLP


def _loader(shape, n=64, batch_size=16):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, *shape, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _fit_and_test(model, shape, tmp_path):
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1,
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, _loader(shape), _loader(shape))
    fit_metrics = dict(trainer.callback_metrics)
    trainer.test(model, _loader(shape), verbose=False)
    return trainer, fit_metrics, dict(trainer.callback_metrics)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (PaperMLP(), (1, 28, 28)),
        (PaperMLP(input_shape=(3, 32, 32), hidden=(32, 16, 8), num_classes=4), (3, 32, 32)),
        (PaperCNN(), (1, 28, 28)),
        (PaperCNN(input_shape=(3, 32, 32), channels=(4, 8, 8), hidden=(16, 8), num_classes=4), (3, 32, 32)),
        (PaperCNN(input_shape=(1, 7, 5)), (1, 7, 5)),  # odd sizes: pooling rounds down
    ],
)
def test_forward_returns_logits(model, shape):
    logits = model(torch.rand(5, *shape))
    assert logits.shape == (5, model.hparams.num_classes)


def test_mlp_layers_and_defaults():
    model = PaperMLP()
    assert [type(m).__name__ for m in model.net] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [m.out_features for m in model.net if isinstance(m, nn.Linear)] == [128, 64, 10]
    assert dict(model.hparams) == {
        "input_shape": (1, 28, 28), "hidden": (128, 64), "num_classes": 10, "lr": 0.005, "momentum": 0.0,
    }  # fmt: skip


def test_cnn_layers():
    model = PaperCNN(input_shape=(3, 32, 32))
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d"] * 2 + ["Flatten", "Linear", "ReLU", "Linear"]
    assert model.net[7].in_features == 32 * 8 * 8


@pytest.mark.parametrize("model_class", [PaperMLP, PaperCNN])
def test_every_activation_is_its_own_module(model_class):
    relus = [m for m in model_class().modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus}) >= 2
    assert not any(m.inplace for m in relus)


@pytest.mark.parametrize("model_class", [PaperMLP, PaperCNN])
def test_sgd_with_the_papers_learning_rate(model_class):
    optimizer = model_class().configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.005 and optimizer.param_groups[0]["momentum"] == 0.0


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (PaperMLP(hidden=(16,)), (1, 28, 28)),
        (PaperCNN(input_shape=(3, 32, 32), channels=(4, 8), hidden=(8,)), (3, 32, 32)),
    ],
)
def test_fit_logs_epoch_metrics(model, shape, tmp_path):
    trainer, fit_metrics, test_metrics = _fit_and_test(model, shape, tmp_path)
    assert trainer.current_epoch == 2
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(fit_metrics)
    assert {"test_loss", "test_acc"} <= set(test_metrics)
    for name in ("train_acc", "val_acc", "test_acc"):
        value = (fit_metrics | test_metrics)[name].item()
        assert 0 <= value <= 1 and value * 32 == round(value * 32)  # a share of the 16 or 32 samples seen


def test_hyperparameters_rebuild_the_model():
    model = PaperCNN(input_shape=(3, 32, 32), channels=(4,), hidden=(8,), lr=0.01)
    clone = PaperCNN(**model.hparams)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]
    assert clone.hparams.lr == 0.01


@pytest.mark.parametrize(
    ("model_class", "kwargs", "match"),
    [
        (PaperMLP, {"hidden": ()}, r"`hidden` must be a non-empty sequence of positive integers, got \(\)"),
        (PaperMLP, {"hidden": (128, 0)}, r"`hidden` must be .* got \(128, 0\)"),
        (PaperMLP, {"hidden": (-3,)}, r"`hidden` must be .* got \(-3,\)"),
        (PaperMLP, {"hidden": (12.5,)}, r"`hidden` must be .* got \(12.5,\)"),
        (
            PaperMLP,
            {"input_shape": (784,)},
            r"`input_shape` must be three positive integers \(C, H, W\), got \(784,\)",
        ),
        (PaperMLP, {"num_classes": 1}, "`num_classes` must be an integer >= 2, got 1"),
        (PaperMLP, {"lr": 0.0}, "`lr` must be positive, got 0.0"),
        (PaperMLP, {"momentum": 1.0}, r"`momentum` must be in \[0, 1\), got 1.0"),
        (
            PaperCNN,
            {"channels": []},
            r"`channels` must be a non-empty sequence of positive integers, got \[\]",
        ),
        (PaperCNN, {"channels": (16, -1)}, r"`channels` must be .* got \(16, -1\)"),
        (PaperCNN, {"hidden": (0,)}, r"`hidden` must be .* got \(0,\)"),
        (PaperCNN, {"input_shape": (1, 0, 28)}, r"`input_shape` must be .* got \(1, 0, 28\)"),
        (
            PaperCNN,
            {"input_shape": (1, 4, 4), "channels": (8, 8, 8)},
            r"`input_shape` \(1, 4, 4\) is too small for 3",
        ),
    ],
)
def test_bad_arguments(model_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_class(**kwargs)
