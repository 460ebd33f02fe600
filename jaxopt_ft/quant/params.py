"""Weight quantization over param trees, chosen per path by ``(regex, value)`` rules.

A rule's value is the bit width (an int, quantized with the default ``axis`` and
``symmetric``), a :class:`QuantSpec` for anything else, or None to keep the leaf in float. A
bare int instead of rules means "every ``kernel`` at that width, everything else float".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from jaxopt_ft import tree as tree_lib
from jaxopt_ft.quant.core import (
    Axis,
    QArray,
    canonical_axis,
    check_bits,
    dequantize,
    fake_quant,
    is_qarray,
    quantize,
)

PyTree = Any
BitsRules = int | None | Sequence[tuple[str, Any]]
# One channel axis (axes) for every leaf, or per path (``ops.kernel_axes``; others get -1).
Axes = Axis | Mapping[str, Axis]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How one leaf is quantized.

    Attributes:
      bits: Integer width, 2-16.
      axis: Channel axis (axes) with their own scale, or None for per tensor. The default -1
        is a Dense/Conv kernel's output channels, which the int8 path needs.
      symmetric: Absmax (zero point 0) or min/max with an integral zero point.
    """

    bits: int
    axis: Axis = -1
    symmetric: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits, what="QuantSpec.bits")


def weight_specs(
    params: PyTree,
    rules: BitsRules,
    *,
    axis: Axes = -1,
    symmetric: bool = True,
    what: str = "weight bits rules",
) -> dict[str, QuantSpec | None]:
    """Resolves bit rules to ``{path: QuantSpec or None}`` for every leaf of ``params``.

    Args:
      params: A param tree (only paths and shapes are read).
      rules: ``[(regex, bits | QuantSpec | None), ...]`` (first full match wins, every leaf
        must be covered, every rule must match), or an int for all ``kernel`` leaves, or None.
      axis: Default channel axis for int rule values, or ``{path: axis}`` (paths it does
        not name get -1), e.g. ``ops.kernel_axes(ops.find_ops(...))`` for per-output-channel
        scales on every kernel shape (attention's 3-D kernels: per head and channel).
      symmetric: Default symmetry for int rule values.
      what: Name used in error messages.

    Returns:
      One entry per leaf path, in leaf order.

    Raises:
      ValueError: Bad bits, an axis out of range for a leaf, or rules that match nothing /
        leave a leaf uncovered.
    """
    shorthand = rules is None or (isinstance(rules, int) and not isinstance(rules, bool))
    if rules is None:
        rules = [(".*", None)]
    elif shorthand:
        rules = [(r"(.*/)?kernel", rules), (".*", None)]
    values = tree_lib.match_rules(params, rules, what=what, allow_unused=shorthand)
    shapes = {p: getattr(x, "shape", ()) for p, x in tree_lib.flatten(params).items()}
    out: dict[str, QuantSpec | None] = {}
    for path, v in values.items():
        if v is None:
            out[path] = None
            continue
        if not isinstance(v, QuantSpec):
            bits = check_bits(v, what=f"{what}: bits for {path!r}")
            ax = axis.get(path, -1) if isinstance(axis, Mapping) else axis
            v = QuantSpec(bits=bits, axis=ax, symmetric=symmetric)
        try:
            canonical_axis(v.axis, len(shapes[path]))
        except ValueError as e:
            raise ValueError(f"{what}: leaf {path!r} of shape {shapes[path]}: {e}") from None
        out[path] = v
    return out


def quantize_params(
    params: PyTree, rules: BitsRules, *, axis: Axes = -1, symmetric: bool = True
) -> PyTree:
    """Post-training weight quantization: QArray leaves where a rule gives bits.

    Args:
      params: A linen param tree.
      rules: See :func:`weight_specs`, e.g.
        ``[("head/kernel", 8), (".*kernel", 4), (".*", None)]``.
      axis: Default channel axis (-1: the last), or ``{path: axis}`` (see
        :func:`weight_specs`).
      symmetric: Default symmetry.

    Returns:
      ``params`` with selected leaves replaced by :class:`QArray` and the rest unchanged.

    Raises:
      ValueError: As :func:`weight_specs`.
    """
    specs = weight_specs(params, rules, axis=axis, symmetric=symmetric)

    def one(path: str, x: Any) -> Any:
        s = specs[path]
        return x if s is None else quantize(x, bits=s.bits, axis=s.axis, symmetric=s.symmetric)

    return tree_lib.map_with_path(one, params)


def dequantize_params(qparams: PyTree) -> PyTree:
    """Replaces every :class:`QArray` leaf with its dequantized float array."""
    return jax.tree.map(lambda x: dequantize(x) if is_qarray(x) else x, qparams, is_leaf=is_qarray)


def fake_quant_params(
    params: PyTree, rules: BitsRules, *, axis: Axes = -1, symmetric: bool = True
) -> PyTree:
    """Fake-quantizes the leaves a rule gives bits (straight-through gradients), for QAT.

    Equal, leaf for leaf, to ``dequantize_params(quantize_params(params, rules, ...))``.
    """
    specs = weight_specs(params, rules, axis=axis, symmetric=symmetric)

    def one(path: str, x: Any) -> Any:
        s = specs[path]
        return x if s is None else fake_quant(x, bits=s.bits, axis=s.axis, symmetric=s.symmetric)

    return tree_lib.map_with_path(one, params)


def quantized_bytes(qparams: PyTree) -> int:
    """In-memory bytes of a tree with QArray leaves (integers + scales + float leaves)."""
    total = 0
    for x in jax.tree.leaves(qparams, is_leaf=is_qarray):
        total += x.nbytes if isinstance(x, QArray) else tree_lib.tree_bytes(x)
    return total
