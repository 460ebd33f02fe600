"""Representation gradients (LibMTL's ``rep_grad``): weights from the shared features' gradients.

Instead of every trunk parameter's per-task gradient (a (T, P) matrix), a weighting method can
read the per-task gradients with respect to the trunk's output ``z`` (B, D), summed over the
batch: a (T, D) matrix, as LibMTL does. They come from one forward pass with a zero offset added
to ``z`` (`model.REP_OFFSET`) and T backward passes through the heads only; the trunk then takes
one backward pass of ``sum_t w_t L_t`` (the weighted representation gradients pushed through
it), and every head its own task's gradient. With MGDA this is Sener & Koltun's MGDA-UB, which
minimises an upper bound of the parameter-gradient objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_ft import train
from jaxopt_ft.multitask.combining import LossTransform, Weighting, metrics_of, no_state
from jaxopt_ft.multitask.model import REP_OFFSET

PyTree = Any
WeightFn = Callable[[jax.Array, jax.Array], jax.Array]


def feature_size(params: PyTree) -> int:
    """D, the width of the representation, read from the first head's kernel."""
    head = next(iter(params["heads"].values()))
    return head["kernel"].shape[0]


def rep_weighting(
    names,
    weights: WeightFn,
    *,
    init: Callable[[PyTree, int], tuple[PyTree, PyTree]] = no_state,
    transform: LossTransform | None = None,
) -> Weighting:
    """A weighting method driven by representation gradients.

    Args:
        names: the task names, in order.
        weights: ``((T, D) representation gradients, (T,) losses) -> (T,) weights``.
        init: the method's ``init`` (e.g. adding learned loss scales to the params).
        transform: ``(losses, params) -> losses`` actually differentiated (IMTL's scales).
    """

    def combine(objective, params, *, aux, key, step, reduce):
        del key, step
        offset = jnp.zeros((feature_size(params),), jnp.float32)

        def fn(p, o):
            losses, (_, model_state) = objective({**p, REP_OFFSET: o})
            used = losses if transform is None else transform(losses, p)
            return used, (losses, model_state)

        used, vjp, (raw, model_state) = jax.vjp(fn, params, offset, has_aux=True)
        num = used.shape[0]
        # Only the offset's cotangents are kept: XLA drops these passes' trunk half.
        rep = jax.vmap(lambda c: vjp(c)[1])(jnp.eye(num, dtype=used.dtype))
        raw, rep = reduce(raw), reduce(rep)
        w = jax.lax.stop_gradient(weights(rep, raw))
        weighted = reduce(vjp(w.astype(used.dtype))[0])
        own = reduce(vjp(jnp.ones_like(used))[0])
        grads = {k: (weighted if k == "trunk" else own)[k] for k in params}
        metrics = metrics_of(names, raw, w)
        value = jnp.sum(w * raw)
        return train.Combined(value, grads, metrics, model_state, aux, {}), None

    return Weighting(init, combine)
