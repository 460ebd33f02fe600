"""What every weighting method shares: the `Weighting` pair and one- or T-pass gradients.

A combiner has `jaxopt_ft.train.mean_gradient`'s signature with an objective that returns the
(T,) task losses; these helpers give it the weighted single pass (`weighted`) or the per-task
pass (`task_grads`, `gradient_method`) averaged over devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_ft import train
from jaxopt_ft.multitask import gradients as grads_lib

PyTree = Any


class Weighting(NamedTuple):
    """One method: ``init(params, num_tasks) -> (params, state)`` and its combiner.

    ``combine`` has `train.mean_gradient`'s signature (with the objective returning the (T,)
    task losses) and returns ``(Combined, stacked trunk gradients or None)``; the stacked
    gradients, when a method has them anyway, feed the similarity matrix for free.
    """

    init: Callable[[PyTree, int], tuple[PyTree, PyTree]]
    combine: Callable[..., tuple[train.Combined, PyTree | None]]


def no_state(params: PyTree, num_tasks: int) -> tuple[PyTree, PyTree]:
    del num_tasks
    return params, ()


def metrics_of(names, losses: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for i, n in enumerate(names):
        out[f"loss_{n}"] = losses[i]
        out[f"weight_{n}"] = weights[i]
    return out


def weighted(objective, params, weights, reduce, names, aux) -> tuple[train.Combined, jax.Array]:
    """One backward pass of ``sum_t w_t L_t``; returns (Combined, the averaged task losses)."""

    def total(p):
        losses, (_, model_state) = objective(p)
        return jnp.sum(weights * losses), (losses, model_state)

    (value, (losses, model_state)), grads = jax.value_and_grad(total, has_aux=True)(params)
    losses = reduce(losses)
    metrics = metrics_of(names, losses, weights)
    return train.Combined(reduce(value), reduce(grads), metrics, model_state, aux, {}), losses


def task_grads(objective, params, reduce):
    """(averaged losses, averaged stacked gradients, model state) in one jacrev pass."""
    losses, stacked, (_, model_state) = grads_lib.per_task_grads(objective, params, has_aux=True)
    return reduce(losses), reduce(stacked), model_state


class Direction(NamedTuple):
    """What a gradient method makes of the (T, P) trunk gradients.

    Attributes:
        trunk: the (P,) trunk update direction.
        weights: (T,) task weights (logged as ``weight_<task>``).
        head_scale: (T,) factors on each task's own head gradient, or None for 1 (the
            gradient methods leave heads alone; loss-weighting ones such as Nash-MTL scale them).
        aux: the method's new state.
    """

    trunk: jax.Array
    weights: jax.Array
    head_scale: jax.Array | None
    aux: PyTree


DirectionFn = Callable[..., Direction]
LossTransform = Callable[[jax.Array, PyTree], jax.Array]


def gradient_method(
    names,
    direction: DirectionFn,
    *,
    init: Callable[[PyTree, int], tuple[PyTree, PyTree]] = no_state,
    transform: LossTransform | None = None,
) -> Weighting:
    """A method that steers the trunk from the per-task trunk gradients.

    One `per_task_grads` pass gives every task's gradient of every leaf; ``direction(matrix,
    losses, aux=, key=, step=)`` turns the (T, P) trunk matrix into one trunk direction, and
    the other leaves (heads, a method's own parameters) get the sum over tasks of their own
    gradients, scaled by ``head_scale`` when given. ``transform(losses, params)`` replaces the
    differentiated losses (log-losses, learned scales); metrics show the raw ones.
    """

    def combine(objective, params, *, aux, key, step, reduce):
        def fn(p):
            losses, (_, model_state) = objective(p)
            used = losses if transform is None else transform(losses, p)
            return used, (losses, model_state)

        _, stacked, (raw, model_state) = grads_lib.per_task_grads(fn, params, has_aux=True)
        raw, stacked = reduce(raw), reduce(stacked)
        matrix = grads_lib.stacked_to_matrix(stacked["trunk"])
        out = direction(matrix, raw, aux=aux, key=key, step=step)
        scale = jnp.ones_like(raw) if out.head_scale is None else out.head_scale
        grads = {
            k: jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1), v)
            for k, v in stacked.items()
            if k != "trunk"
        }
        grads["trunk"] = grads_lib.matrix_row_to_tree(out.trunk, stacked["trunk"])
        value = jnp.sum(out.weights * raw)
        metrics = metrics_of(names, raw, out.weights)
        return train.Combined(value, grads, metrics, model_state, out.aux, {}), stacked["trunk"]

    return Weighting(init, combine)
