"""Flax linen models; each splits into a feature trunk and a final Dense named ``head``.

Every model is called as ``model.apply(variables, x, train=..., features_only=...)``: it
returns logits (B, num_classes), or with ``features_only=True`` the trunk's (B, F) features
without creating or reading ``head``. Parameter names are stable (``conv1``, ``dense2``,
``stage1_block1/bn1``, ``head``), and every width is a field. Models that structured pruning
can shrink declare their own structure: ``unit_groups()`` lists the units removed together
(:class:`UnitGroup`) and ``narrowed(sizes)`` rebuilds the model with fewer units, accepting the
compacted params; the library names no concrete model.

Example:
    >>> model = get("cnn", channels=(64, 64, 64))
    >>> param_count(model, (1, 40))
    28298
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_ft.models._structure import UnitGroup
from jaxopt_ft.models.lenet import LeNet5, LeNet300
from jaxopt_ft.models.mnist1d import CNN1D, MLP, Logistic
from jaxopt_ft.models.resnet import BasicBlock, ResNet
from jaxopt_ft.models.vit import EncoderBlock, Transformer1D, ViT

__all__ = [
    "NAMES",
    "BasicBlock",
    "CNN1D",
    "EncoderBlock",
    "LeNet300",
    "LeNet5",
    "Logistic",
    "MLP",
    "ResNet",
    "Transformer1D",
    "UnitGroup",
    "ViT",
    "fields",
    "get",
    "param_count",
]

_REGISTRY: dict[str, type[nn.Module]] = {
    "logistic": Logistic,
    "mlp": MLP,
    "cnn": CNN1D,
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "resnet": ResNet,
    "vit": ViT,
    "transformer1d": Transformer1D,
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Fields every linen Module has; they are not hyperparameters.
_MODULE_FIELDS = frozenset({"parent", "name"})


def _model_class(name: str) -> type[nn.Module]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"Unknown model name {name!r}. Accepted: {', '.join(NAMES)}. "
            "Fix: set model.name to one of these."
        )
    return _REGISTRY[name]


def fields(name: str, /) -> tuple[str, ...]:
    """Returns the hyperparameters (keyword arguments of :func:`get`) that model ``name`` takes.

    Raises:
        ValueError: If ``name`` is not one of :data:`NAMES`.
    """
    cls = _model_class(name)
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _MODULE_FIELDS)


def get(name: str, /, **kwargs: Any) -> nn.Module:
    """Builds model ``name`` with hyperparameters ``kwargs`` (all optional).

    Lists are turned into tuples, so values read from a config (``hidden=[64, 64]``) work.

    Args:
        name: One of :data:`NAMES`.
        **kwargs: Fields of the model's class, e.g. ``channels=(64, 64, 64)`` for ``"cnn"``.

    Returns:
        An unbound flax linen module.

    Raises:
        ValueError: If ``name`` is unknown, a keyword is not a field of that model, or a value
            is out of range.
    """
    cls = _model_class(name)
    accepted = fields(name)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(
            f"Model {name!r} has no option(s) {', '.join(map(repr, unknown))}. Accepted: "
            f"{', '.join(accepted)}. Fix: remove or rename them in the model config."
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)


def param_count(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Counts ``model``'s parameters for float32 inputs of ``input_shape``, without computing.

    Only the ``params`` collection counts; BatchNorm statistics are state, not parameters.

    Args:
        model: A linen module following this package's call convention.
        input_shape: The input's shape including the batch axis, e.g. ``(1, 40)``.

    Returns:
        The total number of parameter scalars.
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    # eval_shape traces init abstractly: the key's value never matters, only its type.
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(int(leaf.size) for leaf in jax.tree.leaves(shapes.get("params", {})))
