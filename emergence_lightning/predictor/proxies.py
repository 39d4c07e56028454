"""Baseline zero-cost proxies, written from their papers' definitions. Plain PyTorch, no Lightning.

- :func:`naswot`: Mellor et al. 2021, "Neural Architecture Search without Training". Each input of
  a batch gets a binary code, one bit per rectified unit (is the unit's output positive?); the
  kernel ``K[i, j] = N_A - hamming(c_i, c_j)`` counts the units on which two inputs agree, and the
  score is ``log |det K|``.
- :func:`synflow`: Tanaka et al. 2020, "Pruning neural networks without any data by iteratively
  conserving synaptic flow". Weights are replaced by their absolute values, an all-ones input is
  propagated in double precision, ``R`` is the sum of the outputs, and each weight's score is
  ``|theta * dR/dtheta|``; the network's score is their sum.
- ``#params`` is :func:`emergence_lightning.count_parameters`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Activation modules whose output sign is the unit's on/off bit. For ReLU, GELU, SiLU, ELU, Tanh,
# LeakyReLU and Softplus-free rectifiers `output > 0` iff `input > 0`, the code NASWOT reads.
CODE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
)


def _check_inputs(name: str, inputs: object) -> Tensor:
    if not isinstance(inputs, Tensor) or inputs.dim() < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"`{name}` must be a tensor (batch, ...) with at least 2 dims, got {shape}.")
    return inputs


def binary_codes(model: nn.Module, inputs: Tensor) -> Tensor:
    """The NASWOT code matrix: one row per input, one column per unit of every activation module.

    A unit is one element of an activation's output (a feature of an MLP, a channel at a pixel of
    a CNN); its bit is 1 when the output is positive. Train/eval modes are restored.

    Raises:
        ValueError: the model has no activation module (functional activations are not seen).
    """
    inputs = _check_inputs("inputs", inputs)
    activations = [m for m in model.modules() if isinstance(m, CODE_ACTIVATIONS)]
    if not activations:
        raise ValueError(
            f"NASWOT reads the codes of activation modules, and {type(model).__name__} has none of "
            f"{sorted(t.__name__ for t in CODE_ACTIVATIONS)} (functional calls are not seen)."
        )
    codes: list[Tensor] = []

    def keep(module: nn.Module, args: tuple, output: Tensor) -> None:
        codes.append((output.detach() > 0).flatten(1))

    handles = [m.register_forward_hook(keep) for m in activations]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return torch.cat(codes, dim=1)


def hamming_kernel(codes: Tensor) -> Tensor:
    """``K[i, j] = N_A - hamming(c_i, c_j)``: the number of units on which inputs ``i`` and ``j`` agree.

    Example:
        >>> hamming_kernel(torch.tensor([[1, 0, 1], [1, 1, 0]]))
        tensor([[3., 1.],
                [1., 3.]], dtype=torch.float64)
    """
    if codes.dim() != 2:
        raise ValueError(f"`codes` must be a (samples, units) matrix, got shape {tuple(codes.shape)}.")
    on = codes.to(torch.float64)
    off = 1.0 - on
    # Agreements = both on + both off; exact in float64 for up to 2**53 units.
    return on @ on.T + off @ off.T


def naswot(model: nn.Module, inputs: Tensor) -> float:
    """NASWOT score ``log |det K_H|`` of a batch (Mellor et al. 2021); ``-inf`` when two codes coincide.

    Args:
        model: the network (untrained, typically).
        inputs: one batch; the paper uses 128 samples.
    """
    kernel = hamming_kernel(binary_codes(model, inputs))
    sign, logdet = torch.linalg.slogdet(kernel)
    # K is a sum of two Gram matrices, hence positive semi-definite: det is 0 exactly when singular.
    return float(logdet) if float(sign) > 0 else -math.inf


def synflow(model: nn.Module, input_shape: Sequence[int]) -> float:
    """SynFlow score of a network: ``sum |theta * dR/dtheta|`` over its weights (Tanaka et al. 2020).

    ``R = 1^T f(1)`` with every parameter replaced by its absolute value, for an all-ones input of
    shape ``(1, *input_shape)``, in double precision. The model is copied, so its weights are
    untouched. Batch normalisation runs in eval mode (its running statistics; at initialisation
    the identity up to ``eps``), as in the paper's data-free linearised network: training-mode
    normalisation of a single all-ones input would erase the signal. Weights are the parameters
    with two or more dimensions (Linear and convolution kernels: the synapses); a ReLU network then
    gives the path norm ``1^T prod |W_l| 1`` that the paper derives. Other activations are kept, so
    for Tanh or GELU the score is the network's own response to the all-ones input.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0]]))
        ...     _ = net[2].weight.copy_(torch.tensor([[3.0, -1.0]]))
        >>> synflow(net, (2,))  # R = 3*(1+2) + 1*(0.5+1) = 10.5, and each of the 2 layers carries R
        21.0
    """
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(f"`input_shape` must be positive ints (one sample's shape), got {input_shape!r}.")
    clone = copy.deepcopy(model).double()
    clone.eval()  # batch norm on running statistics, dropout off
    with torch.no_grad():
        for parameter in clone.parameters():
            parameter.abs_()
    # A pruned weight (torch.nn.utils.prune: weight_orig * weight_mask) stays 0 and scores 0.
    weights = [p for p in clone.parameters() if p.dim() >= 2]
    if not weights:
        raise ValueError(
            f"SynFlow scores weights (parameters with >= 2 dims); {type(model).__name__} has none."
        )
    for parameter in clone.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    output = clone(torch.ones((1, *shape), dtype=torch.float64))
    if not isinstance(output, Tensor):
        raise TypeError(f"SynFlow needs a model that returns a tensor, got {type(output).__name__}.")
    output.sum().backward()
    total = 0.0
    for weight in weights:
        if weight.grad is not None:
            total += float((weight.detach() * weight.grad).abs().sum())
    return total
