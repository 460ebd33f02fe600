"""Which weight ops a model has, and per-op activation quantization.

The QAT, calibration and int8 paths all intercept ``__call__`` of the layers that run a
matmul or convolution against a weight (``nn.Dense``, ``nn.DenseGeneral`` — attention's four
projections —, ``nn.Einsum``, ``nn.Conv``; see :mod:`jaxopt_ft.ops`) with
:func:`flax.linen.intercept_methods`. An op is named by its module path (``"conv1"``,
``"block1/attn/query"``), which is also the prefix of its params (``"conv1/kernel"``), so one
set of regex rules can speak about both. ``nn.Embed`` tables are weight-only: their input is
integer ids, so activation bits on an embedding are an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import ops as ops_lib
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.quant.core import check_bits, qparams

PyTree = Any
LAYER_TYPES: tuple[type[nn.Module], ...] = tuple(ops_lib.MATMUL_TYPES)
ActRanges = Mapping[str, tuple[float, float]]
layer_path = ops_lib.module_path


def is_layer_call(context: Any) -> bool:
    """Whether an interceptor context is ``__call__`` of a matmul or conv layer."""
    return ops_lib.is_weight_call(context)


def _owners(params: PyTree, leaf_name: str) -> list[str]:
    out = []
    for p in tree_lib.paths(params):
        head, _, leaf = p.rpartition("/")
        if leaf == leaf_name:
            out.append(head)
    return out


def layer_paths(params: PyTree) -> list[str]:
    """Paths of the layers owning a ``kernel`` leaf in ``params``, in leaf order."""
    return _owners(params, "kernel")


def _check_no_embed(params: PyTree, rules: Sequence[tuple[str, Any]]) -> None:
    """A rule meant for an embedding (it matches one and no matmul layer) is an error."""
    layers = layer_paths(params)
    for table in _owners(params, "embedding"):
        for pattern, bits in rules:
            if bits is None or not isinstance(pattern, str) or not re.fullmatch(pattern, table):
                continue
            if not any(re.fullmatch(pattern, p) for p in layers):
                raise ValueError(
                    f"activation bits rule ({pattern!r}, {bits}) names embedding op {table!r}: "
                    "an nn.Embed takes integer ids, which cannot be fake-quantized. Fix: "
                    f"quantize its table with a weight rule ({table + '/embedding'!r}, bits) "
                    "and give it no activation bits."
                )


def act_bits_map(
    params: PyTree, act_bits: int | None | Sequence[tuple[str, Any]]
) -> dict[str, int | None]:
    """Resolves activation widths to ``{layer path: bits or None}``.

    Args:
      params: The model's params (layers are the owners of ``kernel`` leaves).
      act_bits: One width for every layer, None for none, or ``[(regex, bits | None), ...]``
        over layer paths (first full match wins, every layer covered, every rule used).

    Raises:
      ValueError: Bad bits, or rules that match nothing / leave a layer uncovered.
    """
    layers = {p: 0 for p in layer_paths(params)}
    if not (act_bits is None or isinstance(act_bits, int)):
        _check_no_embed(params, act_bits)
    if act_bits is None or (isinstance(act_bits, int) and not isinstance(act_bits, bool)):
        rules: Sequence[tuple[str, Any]] = [(".*", act_bits)]
        values = tree_lib.match_rules(layers, rules, what="activation bits", allow_unused=True)
    else:
        values = tree_lib.match_rules(layers, act_bits, what="activation bits rules")
    return {
        p: None if b is None else check_bits(b, what=f"act bits for {p!r}")
        for p, b in values.items()
    }


def lookup(table: Mapping[str, Any], path: str, what: str) -> Any:
    """``table[path]`` with an error naming the known layers when it is missing."""
    if path not in table:
        raise ValueError(
            f"{what}: no entry for layer {path!r}. Known layers: {sorted(table)}. Fix: "
            "calibrate / resolve rules with the same model and params."
        )
    return table[path]


def act_bounds(
    x: jax.Array, path: str, act_ranges: ActRanges | None, *, axis_name: str | None = None
) -> tuple[Any, Any]:
    """Per-tensor activation range ``(lo, hi)``: calibrated, or this batch's min and max.

    With ``axis_name`` (inside ``pmap``) a batch's range is taken over every device's slice,
    so all replicas quantize alike and match a single-device run on the whole batch.
    """
    if act_ranges is None:
        xf = jax.lax.stop_gradient(x).astype(jnp.float32)
        lo, hi = jnp.min(xf), jnp.max(xf)
        if axis_name is not None:
            lo, hi = jax.lax.pmin(lo, axis_name), jax.lax.pmax(hi, axis_name)
        return lo, hi
    lo, hi = lookup(act_ranges, path, "act_ranges")
    return np.float32(lo), np.float32(hi)


def act_qparams(
    x: jax.Array, path: str, *, bits: int, symmetric: bool, act_ranges: ActRanges | None
) -> tuple[jax.Array, jax.Array]:
    """Per-tensor activation ``(scale, zero_point)`` from :func:`act_bounds`."""
    lo, hi = act_bounds(x, path, act_ranges)
    return qparams(lo, hi, bits=bits, symmetric=symmetric)
