"""Mask pytrees: which leaves are prunable, applying masks, and checking them against params.

A mask is a bool pytree with exactly the params' structure and leaf shapes; True keeps a
weight. Leaves that are not prunable carry all-True masks, so a mask is never ``None`` and
``apply_masks`` is a plain ``where`` over every leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import tree

PyTree = Any

# Default: every leaf named ``kernel`` with ndim >= 2 (Dense and Conv weights). Biases, norm
# scales and embeddings (flax names them ``bias``, ``scale``, ``embedding``) stay dense.
DEFAULT_RULES: tuple[tuple[str, bool], ...] = ((r"(.*/)?kernel", True),)


def select_prunable(
    params: PyTree,
    rules: tree.Rules | None = None,
    *,
    exclude_first: bool = False,
    exclude_last: bool = False,
    layer_order: Sequence[str] | None = None,
) -> PyTree:
    """Returns a pytree of Python bools with ``params``' structure: True = prunable.

    Args:
      params: the parameter pytree (arrays or anything with ``ndim``/``shape``; tracers work).
      rules: ``[(regex, bool), ...]`` over leaf paths, first full match wins; leaves no rule
        covers are not prunable. A rule that matches no path is an error. ``None`` selects
        every ``kernel`` leaf with ``ndim >= 2``.
      exclude_first: leave the first layer (in ``layer_order``) that has prunable leaves dense.
      exclude_last: leave the last such layer dense.
      layer_order: the weight layers' paths in forward order (``model.layer_order()`` for the
        bundled models); a leaf belongs to the longest layer path that prefixes it. Required
        by ``exclude_first``/``exclude_last``: leaf order sorts names, which is not forward
        order (the ResNet's ``head`` sorts before its ``stem_conv``).

    Raises:
      ValueError: a rule matches no parameter, a rule value is not a bool, no leaf is
        prunable, ``exclude_first``/``exclude_last`` without ``layer_order``, or a prunable
        leaf that ``layer_order`` does not cover.
    """
    flat = tree.flatten(params)
    if rules is None:
        chosen = tree.match_rules(
            params, DEFAULT_RULES, what="prunable rules", default=False, allow_unused=True
        )
        chosen = {p: v and np.ndim(flat[p]) >= 2 for p, v in chosen.items()}
    else:
        chosen = tree.match_rules(params, rules, what="prunable rules", default=False)
        bad = {p: v for p, v in chosen.items() if not isinstance(v, bool | np.bool_)}
        if bad:
            raise ValueError(
                f"prunable rules: values must be True or False, got {bad}. "
                "Fix: use rules such as [(r'.*conv.*/kernel', True)]."
            )
        chosen = {p: bool(v) for p, v in chosen.items()}
    if exclude_first or exclude_last:
        layers = _layers_in_order([p for p, v in chosen.items() if v], layer_order)
        dense = [*(layers[:1] if exclude_first else []), *(layers[-1:] if exclude_last else [])]
        for p in (p for layer in dense for p in layer):
            chosen[p] = False
    if not any(chosen.values()):
        raise ValueError(
            f"No prunable parameters among {list(flat)} (rules={rules!r}, "
            f"exclude_first={exclude_first}, exclude_last={exclude_last}). "
            "Fix: pass rules that select at least one weight, e.g. [(r'.*/kernel', True)]."
        )
    return tree.unflatten_like(params, chosen)


def _layers_in_order(paths: list[str], layer_order: Sequence[str] | None) -> list[list[str]]:
    """``paths`` grouped by the layer they belong to, the layers in ``layer_order``."""
    if layer_order is None:
        raise ValueError(
            "exclude_first/exclude_last need the model's forward layer order: sorted leaf "
            "order is not forward order (the ResNet's head sorts before its stem_conv). "
            "Fix: pass layer_order=model.layer_order(), or leave those layers dense with "
            "rules, e.g. [('conv1/kernel', False), ('.*/kernel', True)]."
        )
    if isinstance(layer_order, str):
        raise TypeError(
            f"layer_order={layer_order!r} must be a sequence of layer paths, not one string. "
            "Fix: pass e.g. ('conv1', 'conv2', 'head')."
        )
    order = list(layer_order)
    by_layer: dict[int, list[str]] = {}
    uncovered = []
    for p in paths:
        owners = [i for i, layer in enumerate(order) if p.startswith(f"{layer}/")]
        if not owners:
            uncovered.append(p)
            continue
        by_layer.setdefault(max(owners, key=lambda i: len(order[i])), []).append(p)
    if uncovered:
        raise ValueError(
            f"layer_order {order} does not cover the prunable leaves {uncovered}. Fix: pass "
            "the layer order of the model these params belong to (model.layer_order())."
        )
    return [by_layer[i] for i in sorted(by_layer)]


def prunable_paths(prunable: PyTree) -> list[str]:
    """The paths whose entry in a :func:`select_prunable` tree is True, in leaf order."""
    return [p for p, v in tree.flatten(prunable).items() if v]


def dense_masks(params: PyTree) -> PyTree:
    """All-True masks with ``params``' structure (nothing pruned)."""
    return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.bool_), params)


def nonzero_masks(params: PyTree) -> PyTree:
    """Masks that keep exactly the non-zero entries of ``params`` (e.g. after finalizing)."""
    return jax.tree.map(lambda x: jnp.asarray(x) != 0, params)


def check_masks(params: PyTree, masks: PyTree, *, what: str = "masks") -> None:
    """Raises ValueError unless ``masks`` has ``params``' paths, leaf shapes and bool leaves.

    Works on tracers (only static shapes and dtypes are read).
    """
    p_flat, m_flat = tree.flatten(params), tree.flatten(masks)
    missing = [p for p in p_flat if p not in m_flat]
    extra = [p for p in m_flat if p not in p_flat]
    if missing or extra:
        raise ValueError(
            f"{what} do not match the params' structure: paths missing from {what}: {missing}; "
            f"paths in {what} but not in params: {extra}. Masks are bool pytrees with exactly "
            "the params' structure (never None); build them with prune.dense_masks(params) or "
            "prune.compute_masks(params, ...)."
        )
    shapes = {
        p: (np.shape(m_flat[p]), np.shape(x))
        for p, x in p_flat.items()
        if np.shape(m_flat[p]) != np.shape(x)
    }
    if shapes:
        raise ValueError(
            f"{what} shapes differ from the params' at {{path: (mask shape, param shape)}}: "
            f"{shapes}. Fix: recompute the masks for these params."
        )
    dtypes = {
        p: str(jnp.result_type(m)) for p, m in m_flat.items() if jnp.result_type(m) != jnp.bool_
    }
    if dtypes:
        raise ValueError(
            f"{what} must be bool (True = keep); got dtypes {dtypes}. "
            "Fix: convert with jax.tree.map(lambda m: m.astype(bool), masks)."
        )


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeros the entries of ``params`` where ``masks`` is False; jit-safe and idempotent.

    Raises:
      ValueError: ``masks`` does not match ``params`` (see :func:`check_masks`).
    """
    check_masks(params, masks)
    return _where_tree(params, tree.unflatten_like(params, tree.flatten(masks)))


@jax.jit
def _where_tree(params: PyTree, masks: PyTree) -> PyTree:
    # One jitted program for the whole tree: eager calls compile once, not once per leaf.
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), params, masks)


def mask_sparsity(masks: PyTree, prunable: PyTree | None = None) -> float:
    """Fraction of False entries over the prunable leaves (over all leaves without ``prunable``)."""
    flat = tree.flatten(masks)
    names = prunable_paths(prunable) if prunable is not None else list(flat)
    total = sum(int(np.size(flat[p])) for p in names)
    kept = sum(int(np.count_nonzero(np.asarray(flat[p]))) for p in names)
    return 0.0 if total == 0 else 1.0 - kept / total
