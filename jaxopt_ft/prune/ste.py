"""Straight-through (STE) pruning: a sparse forward pass over dense weights that all train.

The forward uses the top-k weights by magnitude, recomputed from the current dense weights at
every step; the backward treats the mask as the identity, so the gradient reaches (and the
optimizer moves) every weight, pruned ones included, and a pruned weight can come back. This
is the straight-through estimator of Bengio et al. (2013) applied to magnitude masks, as in
Zhou et al. (2021), "Learning N:M fine-grained structured sparse neural networks from
scratch", and jaxpruner's STE pruners. Train with a plain optimizer (no :func:`prune.wrap`);
ship ``prune.apply_masks(params, masks)`` with the masks of the final weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_ft import tree
from jaxopt_ft.prune import allocate
from jaxopt_ft.prune import masks as masks_lib
from jaxopt_ft.prune import scores as scores_lib

PyTree = Any


def ste_masked(params: PyTree, masks: PyTree) -> PyTree:
    """``where(mask, w, 0)`` in the forward pass, the identity in the backward pass."""
    flat = tree.flatten(masks)

    def one(p: str, w: jax.Array) -> jax.Array:
        masked = jnp.where(flat[p], w, jnp.zeros((), w.dtype))
        return w + jax.lax.stop_gradient(masked - w)

    return tree.map_with_path(one, params)


def ste_apply_fn(
    apply_fn: Callable[..., Any],
    *,
    sparsity: float,
    rules: tree.Rules | None = None,
    scope: str = "layer",
    distribution: str = "uniform",
) -> Callable[..., Any]:
    """``apply_fn`` whose params are :func:`ste_masked` by their own magnitude masks.

    Args:
      apply_fn: a linen ``model.apply`` (``variables`` with a ``"params"`` entry first).
      sparsity: fraction of the prunable weights the forward pass drops, in ``[0, 1)``.
      rules: prunable rules ``[(regex, bool)]``; default kernels with ndim >= 2.
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (layer scope).

    Raises:
      ValueError: a sparsity outside ``[0, 1)`` or an unknown scope / distribution.
    """
    allocate.check_sparsity(sparsity)
    allocate.check_scope(scope, distribution)

    def masks_of(params: PyTree) -> PyTree:
        scores = scores_lib.magnitude_scores(jax.lax.stop_gradient(params))
        return allocate.masks_from_scores(
            scores,
            sparsity=sparsity,
            prunable=masks_lib.select_prunable(params, rules),
            scope=scope,
            distribution=distribution,
        )

    def apply(variables: PyTree, *args: Any, **kwargs: Any) -> Any:
        params = variables["params"]
        sparse = ste_masked(params, masks_of(params))
        return apply_fn({**variables, "params": sparse}, *args, **kwargs)

    return apply
