"""What is a layer and what is a node. Plain PyTorch, no Lightning.

A *layer* is the output of one activation call site, in the order the forward pass runs it:

- an activation module of any library (``nn.ReLU``, timm's ``GELU``, Hugging Face's
  ``GELUActivation``, a user's ``Swish``): a leaf module in whose forward an activation function
  ran. Its output is the layer, so a GELU built from ``torch.tanh`` is one layer, not two;
- a functional call (``F.relu``, ``torch.tanh``, ``x.sigmoid()``) made directly in the forward of
  a module that has submodules (``nn.TransformerEncoderLayer``'s ``F.relu``);
- the output of a recurrent module (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``);
- the output of a composite activation module (timm's ``StarReLU``: ``s * relu(x) ** 2 + b``), not
  the ``nn.ReLU`` inside it (:func:`composite_candidates`).

Mixture-of-experts blocks are in :mod:`.experts`, weights applied functionally in :mod:`.producers`.

Each call site is its own layer. Names a person can find, made only of letters, digits and
``_ - . /`` so that every logger (TensorBoard, CSV, W&B, MLflow) keeps them unchanged: the
module's qualified name for a module (``layer1.0.relu``), ``<module>.<function>-fn`` for a
functional call (``encoder.layers.0.relu-fn``), ``-call<k>`` for the k-th call of the same site in
one forward pass (``layer1.0.relu-call2``), and ``model-input`` / ``model-output`` for the data and
the logits. A name made for a call site never equals a real module's name (a ``-site`` suffix is
added in the rare model whose module names would collide). Qualified names leave out the
attributes by which wrappers hold the wrapped model (``torch.compile``'s ``_orig_mod``, Fabric's
``_forward_module``, DDP's ``module``, FSDP1's ``_fsdp_wrapped_module``), so eager, compiled,
Fabric, DDP and FSDP runs log the same keys. Softmax is not an activation here: it normalises logits.

A *node* is one feature of the layer that produced the activation's input: a convolution's
channel (dim 1) or a Linear's feature (the last dim, also for ``(N, tokens, features)`` and
channels-last ``(N, H, W, C)`` outputs). :func:`node_dim_from_producer` decides it per layer.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emergence_lightning import _compat
from emergence_lightning.measure.producers import FunctionalProducer, node_dim_from_functional

INPUT_LAYER = "model-input"
OUTPUT_LAYER = "model-output"
FUNCTION_MARK = "-fn"  # encoder.layers.0.relu-fn: F.relu called in encoder.layers.0's forward
CALL_MARK = "-call"  # layer1.0.relu-call2: the second call of layer1.0.relu in one forward pass
SITE_MARK = "-site"  # added to a call site's name while it equals a real module's name

# Attributes by which wrappers hold the wrapped module; they add nothing to a layer's name.
# torch.compile: _orig_mod; Fabric (and Lightning's own wrapper): _forward_module, _original_module;
# FSDP1: _fsdp_wrapped_module; activation checkpointing: _checkpoint_wrapped_module.
WRAPPER_ATTRIBUTES = frozenset(
    {"_orig_mod", "_forward_module", "_original_module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"}
)
# Wrappers that hold the wrapped module as plain `module` (a name users give their own modules too).
MODULE_ATTRIBUTE_WRAPPERS = frozenset({"DistributedDataParallel", "DataParallel", "DeepSpeedEngine"})


def _activation_functions() -> dict[object, str]:
    """Every function and Tensor method that applies an element-wise activation, -> short name."""
    names = [
        "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus",
        "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "prelu", "rrelu", "logsigmoid",
        "softsign", "tanhshrink", "threshold", "glu",
    ]  # fmt: skip
    found: dict[object, str] = {}
    for name in names:
        for space in (F, torch, torch.Tensor, _compat.torch_nn_namespace):
            for variant in (name, name + "_"):
                function = getattr(space, variant, None)
                if callable(function):
                    found.setdefault(function, name)
    found[torch.special.expit] = "sigmoid"
    return found


#: Function or method object -> the activation's short name (used in call-site names).
ACTIVATION_FUNCTIONS: dict[object, str] = _activation_functions()

#: Activations whose output is never negative (NaN aside): on such an output |a| is a, so the
#: ``mean_abs`` statistic sums it as it is (the same operations as ``mean``: bit for bit equal, and
#: no |a| written). Functions by short name; modules by exact type (a subclass may override forward).
NON_NEGATIVE_ACTIVATIONS = frozenset({"relu", "relu6", "sigmoid", "softplus", "hardsigmoid"})
NON_NEGATIVE_MODULES: frozenset[type[nn.Module]] = frozenset(
    {nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid}
)


def activation_name(function: object) -> str | None:
    """The short name of an activation function (``"relu"``), or None for any other function."""
    try:
        return ACTIVATION_FUNCTIONS.get(function)
    except TypeError:  # an unhashable callable is no activation
        return None


def is_recurrent(module: nn.Module) -> TypeGuard[nn.RNNBase]:
    return isinstance(module, nn.RNNBase)


def call_site_name(site: str, call: int, modules: frozenset[str] | set[str] = frozenset()) -> str:
    """``site`` for its first call in a forward pass, ``site-call<k>`` for its k-th (never a module's name)."""
    return site if call == 1 else unambiguous(f"{site}{CALL_MARK}{call}", modules)


def functional_site(owner: str, function: str, modules: frozenset[str] | set[str] = frozenset()) -> str:
    """Name of a functional activation call made in the forward of module ``owner`` (never a module's name)."""
    return unambiguous(
        f"{owner}.{function}{FUNCTION_MARK}" if owner else f"{function}{FUNCTION_MARK}", modules
    )


def unambiguous(name: str, modules: frozenset[str] | set[str]) -> str:
    """``name``, with ``-site`` added while it equals one of ``modules`` (a call site is no module)."""
    while name in modules:
        name += SITE_MARK
    return name


_SITE = re.compile(rf"(?P<site>.+?)(?:{CALL_MARK}\d+)?(?:{SITE_MARK})*")


def base_name(layer: str) -> str:
    """The site a layer name belongs to: ``layer1.0.relu-call2`` -> ``layer1.0.relu``."""
    match = _SITE.fullmatch(layer)
    return match["site"] if match else layer


def functional_owner(site: str) -> str | None:
    """The module whose forward made a functional call site (``a.b.relu-fn`` -> ``a.b``); None if no such site."""
    if not site.endswith(FUNCTION_MARK):
        return None
    owner, _, function = site[: -len(FUNCTION_MARK)].rpartition(".")
    return owner if function in set(ACTIVATION_FUNCTIONS.values()) else None


_OLD_NAME = re.compile(r"(?P<site>.*?)(?P<function>\(\))?(?:#(?P<call>\d+))?")


def migrated_name(name: str) -> str:
    """A layer name in the spelling of version 0.1 (``a.relu#2``, ``a.relu()``, ``<input>``) in today's.

    Warns (``FutureWarning``) when it changed a name: the old spellings held ``#``, ``(``, ``)``,
    ``<``, ``>``, which MLflow rewrites or refuses.
    """
    old_pseudo = {"<input>": INPUT_LAYER, "<output>": OUTPUT_LAYER}
    if name in old_pseudo:
        new = old_pseudo[name]
    else:
        match = _OLD_NAME.fullmatch(name)
        if match is None or not (match["function"] or match["call"]):
            return name
        new = match["site"] + (FUNCTION_MARK if match["function"] else "")
        new += f"{CALL_MARK}{match['call']}" if match["call"] and match["call"] != "1" else ""
    warnings.warn(
        f"Layer name {name!r} uses the spelling of emergence-lightning 0.1; it is now {new!r} "
        "(call sites use `-fn` and `-call<k>` instead of `()` and `#k`). Read as the new name.",
        FutureWarning,
        stacklevel=4,
    )
    return new


_HOLDS_MODULE: dict[type, bool] = {}


def _holds_module(module_type: type) -> bool:
    """Whether a module of this type is a wrapper that holds its model as ``.module`` (DDP)."""
    found = _HOLDS_MODULE.get(module_type)
    if found is None:
        found = _HOLDS_MODULE[module_type] = any(
            cls.__name__ in MODULE_ATTRIBUTE_WRAPPERS for cls in module_type.__mro__
        )
    return found


def qualified_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model.named_modules()`` with the wrappers' attributes left out of every name.

    A wrapper and the module it wraps get the same name (the wrapper first, as
    ``named_modules`` orders them), so the wrapped module's layers are named as in an eager,
    unwrapped run: ``torch.compile(net)``'s ``_orig_mod.1`` is ``1``, DDP's ``module.fc`` is ``fc``.
    """
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append((name, module))
        holds_module = _holds_module(type(module))
        children = []
        for attribute, child in _compat.child_modules(module).items():
            if child is None:
                continue
            hidden = attribute in WRAPPER_ATTRIBUTES or (attribute == "module" and holds_module)
            children.append((name if hidden else f"{name}.{attribute}" if name else attribute, child))
        stack.extend(reversed(children))  # depth first, in definition order
    return found


# Producers whose output indexes nodes by dim 1 (channels first) or by the last dim (features).
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
_FEATURES_LAST: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
    nn.LayerNorm,
    nn.MultiheadAttention,
    nn.RNNBase,
)
if hasattr(nn, "RMSNorm"):
    _FEATURES_LAST = (*_FEATURES_LAST, nn.RMSNorm)


def is_producer(module: nn.Module) -> bool:
    """A module whose output fixes the node layout of what follows: one with parameters of its own."""
    return any(True for _ in module.parameters(recurse=False))


def produced_features(module: nn.Module) -> set[int]:
    """How many features (nodes) a producer's output has, as far as its definition tells."""
    for attribute in (
        "out_channels",
        "out_features",
        "num_features",
        "num_channels",
        "embedding_dim",
        "embed_dim",
    ):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return {value}
    if isinstance(module, nn.LayerNorm) or hasattr(module, "normalized_shape"):
        shape = getattr(module, "normalized_shape", ())
        if shape:
            return {int(shape[-1]) if not isinstance(shape, int) else shape}
    if is_recurrent(module):
        hidden = module.proj_size or module.hidden_size if isinstance(module, nn.LSTM) else module.hidden_size
        return {hidden * (2 if module.bidirectional else 1)}
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() >= 1:
        # Linear-like (out, in) or Hugging Face's Conv1D (in, out): either end may be the output.
        return {int(weight.shape[0]), int(weight.shape[-1])}
    return set()


def node_dim_from_producer(
    shape: tuple[int, ...],
    producer: nn.Module | FunctionalProducer | None,
    producer_shape: tuple[int, ...] | None = None,
) -> int | None:
    """The dimension indexing nodes of an activation whose input has ``shape``; None if undecidable.

    2-D inputs are ``(batch, features)``. For more dimensions the producing layer decides: the
    dimension (1 or last) whose size is the producer's feature count; when both match, the
    producer's kind (a convolution or batch norm: channels first; a Linear: last). When neither
    matches (the output was reshaped on the way: attention heads merged, tokens flattened and
    restored), the side where the producer's own output, of ``producer_shape``, held its features,
    unless a transpose moved it. A weight applied functionally (:mod:`.producers`) says itself where
    its features are.
    """
    if len(shape) <= 2:
        return len(shape) - 1
    if producer is None:
        return None
    if isinstance(producer, FunctionalProducer):
        return node_dim_from_functional(shape, producer)
    features = produced_features(producer)
    side = _matching_side(shape, features, producer)
    if side is None and producer_shape is not None:
        # LeViT: a BatchNorm1d on (batch * tokens, 256) rows, then attention: (batch, tokens, 128).
        produced_side = _matching_side(producer_shape, features, producer) if len(producer_shape) > 2 else -1
        if produced_side is not None and _layout_kept(producer_shape, shape, produced_side):
            side = produced_side
    if side is None:
        return None
    return 1 if side == 1 else len(shape) - 1


def _layout_kept(produced: tuple[int, ...], shape: tuple[int, ...], side: int) -> bool:
    """Whether reshaping ``produced`` into ``shape`` kept the side features sit on: the same rank (a
    conv, then ``pixel_shuffle``), or ``(batch * tokens, features)`` rows split into ``(batch,
    tokens, features)``. Not heads split off a ``(batch, tokens, features)`` output (rank 4), and not
    a transpose: when a size of the producer's positions now sits on the features' side (Mamba's
    ``in_proj(x).transpose(1, 2)``: ``(batch, 12 tokens, 128)`` -> ``(batch, 64, 12 tokens)``).
    """
    if len(produced) == 2 and len(shape) == 3:
        return True
    if len(produced) != len(shape):
        return False
    feature_dim = 1 if side == 1 else len(produced) - 1
    positions = {size for dim, size in enumerate(produced) if dim not in (0, feature_dim)}
    return shape[feature_dim] not in positions


def node_dim_override(node_dim: object, name: str, site: str) -> int | None:
    """The ``node_dim`` the user set for layer ``name`` (or its call ``site``), for every layer (an
    int), or None when it is to be decided from the producer.
    """
    if isinstance(node_dim, Mapping):
        return node_dim.get(name, node_dim.get(site))
    return node_dim  # type: ignore[return-value]


def decide_node_dim(
    name: str,
    shape: tuple[int, ...],
    batch_dim: int,
    override: int | None,
    producer: nn.Module | FunctionalProducer | None,
    producer_shape: tuple[int, ...] | None,
    reader: nn.Module | None = None,
) -> tuple[int, str | None]:
    """Layer ``name``'s node dimension, and a warning when it had to be guessed.

    ``override``: the user's ``node_dim`` for it (checked against ``shape``); ``batch_dim`` 1: a
    recurrent module's ``(time, batch, features)``; ``reader``: the module that reads the data when
    the layer is the model's input (``include_input``); else the ``producer`` decides (see
    :func:`node_dim_from_producer`), and when it cannot, dim 1 is counted with a warning.
    """
    rank = len(shape)
    if override is not None:
        if not -rank <= override < rank or override % rank == batch_dim:
            raise ValueError(
                f"`node_dim`={override} does not fit layer {name!r}, whose output has shape {shape} (batch on "
                f"dim {batch_dim}); pick one of its other dimensions."
            )
        return override % rank, None
    if batch_dim != 0:
        return rank - 1, None
    if reader is not None:  # the data: the module reading it decides
        decided = input_node_dim(shape, reader)
        source = f"read by {type(reader).__name__}"
    else:
        decided = node_dim_from_producer(shape, producer, producer_shape)
        kind = (
            getattr(producer, "description", type(producer).__name__)
            if producer is not None
            else "no layer with parameters"
        )
        source = f"produced by {kind}"
    if decided is not None:
        return decided, None
    return 1, (
        f"Layer {name!r} has shape {shape} and was {source}, which does not tell which "
        f"dimension indexes its nodes; counting dim 1. Pass `node_dim={{{name!r}: d}}` to choose."
    )


def input_node_dim(shape: tuple[int, ...], consumer: nn.Module) -> int | None:
    """The dimension indexing the nodes of the data entering ``consumer`` (``include_input``).

    The module that reads the data tells: a convolution's ``in_channels`` (dim 1), a Linear's
    ``in_features`` (the last dim, also for ``(batch, tokens, features)``).
    """
    if len(shape) <= 2:
        return len(shape) - 1
    features = set()
    for attribute in ("in_channels", "in_features", "num_features", "embed_dim", "input_size"):
        value = getattr(consumer, attribute, None)
        if isinstance(value, int):
            features.add(value)
    side = _matching_side(shape, features, consumer)
    return None if side is None else (1 if side == 1 else len(shape) - 1)


def _matching_side(shape: tuple[int, ...], features: set[int], producer: nn.Module) -> int | None:
    """1 (channels first) or -1 (features last) for ``producer``'s output of ``shape``; None if unclear."""
    first, last = shape[1] in features, shape[-1] in features
    if first and not last:
        return 1
    if last and not first:
        return -1
    if first and last:
        if isinstance(producer, _CHANNELS_FIRST):
            return 1
        if type(producer) in _FEATURES_LAST:  # exact types: a LayerNorm2d subclass is channels first
            return -1
    return None


def parametrised_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that own parameters, in definition order: where the input and logits are read."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if not list(module.children()) and is_producer(module)
    ]


# Containers run their children in turn: their output is the last child's, never a composite.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def composite_candidates(model: nn.Module) -> set[int]:
    """Modules that may be one composite activation: every child a parameter-free leaf, and no
    weight matrix of their own (a scale or bias per feature is allowed).

    timm's ``StarReLU`` (``scale * relu(x) ** 2 + bias``) and ``SquaredReLU`` (``relu(x) ** 2``)
    wrap an ``nn.ReLU``; the activation is their output, not the inner ReLU's. Whether a candidate
    is one is decided when it returns (:func:`is_composite_output`): its own output differs from
    the one activation that ran inside it, with the same shape. timm's ``BatchNormAct2d``, whose
    output *is* its ``act`` child's, keeps the child's name.
    """
    found = set()
    for module in model.modules():
        children = list(module.children())
        if not children or isinstance(module, _CONTAINERS):
            continue
        if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            continue  # it applies weight matrices of its own (an MoE's experts): a producer, not an activation
        if all(next(child.children(), None) is None and not is_producer(child) for child in children):
            found.add(id(module))
    return found


def is_composite_output(output: object, inner: object) -> bool:
    """Whether a candidate's ``output`` is computed element-wise from its one ``inner`` activation."""
    return (
        isinstance(output, Tensor)
        and isinstance(inner, Tensor)
        and output is not inner
        and output.shape == inner.shape
    )


def changed_call_counts(previous: dict[str, int], current: dict[str, int]) -> list[str]:
    """Call sites that ran a different number of times in two forward passes (absent: 0 times)."""
    return [
        site for site in dict.fromkeys([*previous, *current]) if previous.get(site, 0) != current.get(site, 0)
    ]
