"""Importance scores: higher = more important; the lowest-scoring weights are pruned first.

Every scorer returns a float pytree with the params' structure. Scores exist for every leaf;
which leaves are actually pruned is decided by the prunable tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import tree

PyTree = Any

SCORERS = ("magnitude", "random", "saliency")


def _elementwise(fn: Callable[..., Any], *trees: PyTree) -> PyTree:
    """Maps ``fn(xp, *leaves)`` over trees: numpy on concrete values (no compilation for
    host-side pruning), jnp under tracing."""
    leaves = jax.tree.leaves(trees)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return jax.tree.map(lambda *xs: fn(jnp, *xs), *trees)
    host = lambda *xs: jnp.asarray(fn(np, *(np.asarray(jax.device_get(x)) for x in xs)))
    return jax.tree.map(host, *trees)


def magnitude_scores(params: PyTree) -> PyTree:
    """``|w|`` for every leaf."""
    return _elementwise(lambda xp, w: xp.abs(w).astype(xp.float32), params)


def random_scores(params: PyTree, *, key: jax.Array) -> PyTree:
    """Uniform ``[0, 1)`` scores: one draw from ``key`` split over the leaves in leaf order."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = [int(np.size(w)) for w in leaves]
    # One draw for all leaves compiles much faster than one per leaf.
    flat = jax.random.uniform(key, (sum(sizes),), jnp.float32)
    offsets = np.cumsum([0, *sizes])
    out = [
        flat[a:b].reshape(jnp.shape(w))
        for a, b, w in zip(offsets[:-1], offsets[1:], leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def saliency_scores(params: PyTree, grads: PyTree) -> PyTree:
    """SNIP connection saliency ``|w * g|`` (Lee et al. 2019) from a gradient pytree.

    Raises:
      ValueError: ``grads`` does not have the params' paths.
    """
    p_paths, g_flat = tree.paths(params), tree.flatten(grads)
    if sorted(p_paths) != sorted(g_flat):
        raise ValueError(
            f"saliency_scores: grads paths {sorted(g_flat)} differ from params paths "
            f"{sorted(p_paths)}. Fix: pass the gradient of the loss w.r.t. these params."
        )
    grads = tree.unflatten_like(params, g_flat)
    return _elementwise(lambda xp, w, g: xp.abs(w * g).astype(xp.float32), params, grads)


def snip_scores(
    loss_fn: Callable[..., jax.Array], params: PyTree, *args: Any, **kwargs: Any
) -> PyTree:
    """SNIP scores from a loss: ``|w * d loss_fn(params, *args, **kwargs) / dw|``.

    Example::

      scores = prune.snip_scores(lambda p, b: loss(model.apply({"params": p}, b["x"]),
                                                     b["y"]), params, batch)
    """
    grads = jax.grad(loss_fn)(params, *args, **kwargs)
    return saliency_scores(params, grads)


def score(
    scorer: str | Callable[[PyTree, PyTree | None, jax.Array | None], PyTree],
    params: PyTree,
    *,
    grads: PyTree | None = None,
    key: jax.Array | None = None,
) -> PyTree:
    """Dispatches on a scorer name (``"magnitude"``, ``"random"``, ``"saliency"``) or callable.

    A callable scorer is called as ``scorer(params, grads, key)`` and returns a score pytree.

    Raises:
      ValueError: unknown scorer name, or the scorer's input (``key``/``grads``) is missing.
    """
    if callable(scorer):
        return scorer(params, grads, key)
    check_scorer(scorer)
    if scorer == "magnitude":
        return magnitude_scores(params)
    if scorer == "random":
        if key is None:
            raise ValueError("scorer='random' needs a key. Fix: pass key=jax.random.key(seed).")
        return random_scores(params, key=key)
    if grads is None:
        raise ValueError(
            "scorer='saliency' needs gradients. Fix: pass grads=jax.grad(loss)(params, batch) "
            "or use prune.snip_scores(loss_fn, params, batch)."
        )
    return saliency_scores(params, grads)


def check_scorer(scorer: Any) -> None:
    """Raises ValueError unless ``scorer`` is a known scorer name or a callable."""
    if not callable(scorer) and scorer not in SCORERS:
        raise ValueError(
            f"Unknown scorer {scorer!r}; accepted: {list(SCORERS)} or a callable "
            "(params, grads, key) -> scores. Fix: pass one of those."
        )
