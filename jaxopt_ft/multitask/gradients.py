"""Per-task gradients in one pass, PCGrad, and the cosine task-similarity matrix.

`per_task_grads` differentiates the vector of T task losses with `jax.jacrev`: one forward
pass, then the backward pass vmapped over the T one-hot cotangents (task selectors). Every
leaf of the result gains a leading task axis of length T ("stacked" gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


def per_task_grads(
    loss_fn: Callable[..., Any], params: PyTree, *args: Any, has_aux: bool = False
) -> tuple:
    """Task losses and their gradients, all tasks in one pass.

    Args:
        loss_fn: ``(params, *args) -> (T,) losses`` (or ``((T,) losses, aux)`` with
            ``has_aux``).
        params: the parameters to differentiate.
        *args: passed on to ``loss_fn``.
        has_aux: whether ``loss_fn`` also returns auxiliary data.

    Returns:
        ``(losses, grads)`` or ``(losses, grads, aux)``; every leaf of ``grads`` has shape
        ``(T, *leaf.shape)`` and ``grads[t]`` is ``jax.grad`` of ``losses[t]``.
    """

    def with_value(p):
        out = loss_fn(p, *args)
        losses, aux = out if has_aux else (out, None)
        return losses, (losses, aux)

    grads, (losses, aux) = jax.jacrev(with_value, has_aux=True)(params)
    return (losses, grads, aux) if has_aux else (losses, grads)


def stacked_to_matrix(stacked: PyTree) -> jax.Array:
    """(T, P) matrix of stacked gradients, each task's gradient flattened into a row."""
    leaves = jax.tree.leaves(stacked)
    return jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def matrix_row_to_tree(row: jax.Array, stacked: PyTree) -> PyTree:
    """Inverse of one row of `stacked_to_matrix`: a (P,) vector back to one gradient tree."""
    leaves, treedef = jax.tree.flatten(stacked)
    out, start = [], 0
    for x in leaves:
        size = x[0].size
        out.append(row[start : start + size].reshape(x.shape[1:]).astype(x.dtype))
        start += size
    return jax.tree.unflatten(treedef, out)


def pcgrad_project(grads: jax.Array, key: jax.Array) -> jax.Array:
    """PCGrad (Yu et al. 2020) on a (T, P) matrix of task gradients; returns the projected rows.

    For each task i, in a random order of the other tasks j (drawn from ``key``, one order per
    task): when ``g_i' . g_j < 0``, ``g_i' -= (g_i' . g_j) / ||g_j||^2 * g_j`` with the original
    ``g_j``. Non-conflicting pairs are left alone.
    """
    num_tasks = grads.shape[0]
    orders = jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(
        jax.random.split(key, num_tasks)
    )
    sq = jnp.sum(grads * grads, axis=1)
    safe_sq = jnp.where(sq > 0, sq, 1.0)

    def project(g_i, i, order):
        def body(g, j):
            dot = jnp.vdot(g, grads[j])
            coef = jnp.where((dot < 0) & (j != i), dot / safe_sq[j], 0.0)
            return g - coef * grads[j], None

        g, _ = jax.lax.scan(body, g_i, order)
        return g

    return jax.vmap(project)(grads, jnp.arange(num_tasks), orders)


def pcgrad(grads: Mapping[str, PyTree], key: jax.Array) -> PyTree:
    """PCGrad's combined update direction ``sum_t g_t'`` from ``{task: gradient tree}``.

    Example:
        >>> pcgrad({"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}, key)
        Array([0.5, 1.5], dtype=float32)
    """
    names = list(grads)
    if not names:
        raise ValueError("pcgrad needs at least one task gradient; got an empty dict.")
    rows = [ravel_pytree(grads[n])[0] for n in names]
    unravel = ravel_pytree(grads[names[0]])[1]
    return unravel(jnp.sum(pcgrad_project(jnp.stack(rows), key), axis=0))


def cosine_matrix(grads: jax.Array) -> jax.Array:
    """(T, T) cosine similarities of the rows of a (T, P) matrix; symmetric, unit diagonal.

    A task with a zero gradient has similarity 0 with the others (and 1 with itself).
    """
    norms = jnp.linalg.norm(grads, axis=1)
    unit = grads / jnp.where(norms > 0, norms, 1.0)[:, None]
    cos = unit @ unit.T
    cos = 0.5 * (cos + cos.T)
    eye = jnp.eye(grads.shape[0], dtype=bool)
    return jnp.where(eye, 1.0, jnp.clip(cos, -1.0, 1.0))


def cosine_similarity(grads: Mapping[str, PyTree]) -> jax.Array:
    """(T, T) cosine similarities between ``{task: gradient tree}``, in the dict's order."""
    return cosine_matrix(jnp.stack([ravel_pytree(g)[0] for g in grads.values()]))


class SimilarityState(NamedTuple):
    """Sum of the per-step similarity matrices and how many steps were added."""

    total: jax.Array
    count: jax.Array

    def mean(self) -> jax.Array:
        """The average (T, T) matrix (the identity before any step was added)."""
        eye = jnp.eye(self.total.shape[0], dtype=self.total.dtype)
        return jnp.where(self.count > 0, self.total / jnp.maximum(self.count, 1), eye)


def similarity_init(num_tasks: int) -> SimilarityState:
    return SimilarityState(jnp.zeros((num_tasks, num_tasks), jnp.float32), jnp.zeros((), jnp.int32))
