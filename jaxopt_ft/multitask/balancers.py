"""Gradient-balancing methods at LibMTL's breadth, one factory per method.

Each ``_<name>(method, tasks) -> Weighting`` is registered in
`jaxopt_ft.multitask.methods.WEIGHTINGS`. The gradient methods take the per-task gradients in
one pass (`combining.gradient_method`) and steer only the trunk: every head moves with its own
task's gradient, as in LibMTL, unless the method weights the losses themselves (Nash-MTL,
RLW). Under ``pmap`` the losses and gradients are averaged over devices before any solver
runs, and random draws use the step key shared by all devices, so data-parallel updates equal
single-device ones.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_ft.multitask import balancing as bal
from jaxopt_ft.multitask.combining import Direction, Weighting, gradient_method, weighted
from jaxopt_ft.multitask.representation import rep_weighting

if TYPE_CHECKING:
    from jaxopt_ft.multitask.methods import Method
    from jaxopt_ft.multitask.tasks import Task

DB_EPS = 1e-8
REP_GRAD_METHODS = ("mgda", "mgda_ub", "imtl", "aligned_mtl")


def _names(tasks) -> list[str]:
    return [t.name for t in tasks]


def _mgda(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
    2018): the trunk moves along the min-norm point of the convex hull of the (normalised)
    task gradients (`balancing.mgda_weights`). With ``rep_grad`` the hull is that of the
    representation gradients (MGDA-UB) and the weights scale the unnormalised ones, as in
    LibMTL."""

    def weights(g, losses):
        g = bal.mgda_normalize(g, losses, method.mgda_normalize)
        return bal.mgda_weights(g @ g.T)

    if method.rep_grad:
        return rep_weighting(_names(tasks), weights)

    def direction(matrix, losses, *, aux, key, step):
        del key, step
        g = bal.mgda_normalize(matrix, losses, method.mgda_normalize)
        w = bal.mgda_weights(g @ g.T)
        return Direction(w @ g, w, None, aux)

    return gradient_method(_names(tasks), direction)


def _mgda_ub(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """MGDA-UB (Sener & Koltun §3.3): MGDA on the gradients of the shared representation."""
    return _mgda(dataclasses.replace(method, rep_grad=True), tasks)


def _cagrad(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """CAGrad (Liu et al., NeurIPS 2021): the mean gradient plus the conflict-averse correction
    within a ball of radius ``cagrad_alpha * ||g0||`` (`balancing.cagrad_direction`)."""

    def direction(matrix, losses, *, aux, key, step):
        del losses, key, step
        d, w = bal.cagrad_direction(
            matrix, alpha=method.cagrad_alpha, rescale=method.cagrad_rescale
        )
        return Direction(d, w, None, aux)

    return gradient_method(_names(tasks), direction)


def _nash_mtl(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022): losses
    weighted by the bargaining solution ``G G^T a = 1/a`` (`balancing.nash_weights`), heads
    included; the trunk update is clipped to norm ``nash_max_norm`` (0: no clipping)."""

    def direction(matrix, losses, *, aux, key, step):
        del losses, key, step
        alpha = bal.nash_weights(matrix @ matrix.T)
        d = alpha @ matrix
        if method.nash_max_norm > 0:
            d = d * jnp.minimum(1.0, method.nash_max_norm / (jnp.linalg.norm(d) + 1e-6))
        return Direction(d, alpha, alpha, aux)

    return gradient_method(_names(tasks), direction)


def _imtl(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021), the hybrid form:
    learned loss scales ``exp(s_t) L_t - s_t`` (IMTL-L, ``params["imtl_scale"]``) and the
    closed-form impartial gradient weights on the scaled gradients (IMTL-G,
    `balancing.imtl_weights`)."""
    names = _names(tasks)

    def init(params, num_tasks):
        del num_tasks
        return {**params, "imtl_scale": {n: jnp.zeros((), jnp.float32) for n in names}}, ()

    def transform(losses, params):
        s = jnp.stack([params["imtl_scale"][n] for n in names])
        return jnp.exp(s) * losses - s

    if method.rep_grad:
        weights = lambda g, losses: bal.imtl_weights(g)  # noqa: E731
        return rep_weighting(names, weights, init=init, transform=transform)

    def direction(matrix, losses, *, aux, key, step):
        del losses, key, step
        alpha = bal.imtl_weights(matrix)
        return Direction(alpha @ matrix, alpha, None, aux)

    return gradient_method(names, direction, init=init, transform=transform)


def _gradvac(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """GradVac (Wang et al., "Gradient Vaccine", ICLR 2021): each task's gradient is pulled
    towards the others until their cosine reaches an EMA target (`balancing.gradvac_project`);
    the targets (T, T) are the method's state."""

    def init(params, num_tasks):
        return params, jnp.zeros((num_tasks, num_tasks), jnp.float32)

    def direction(matrix, losses, *, aux, key, step):
        del step
        adjusted, rho = bal.gradvac_project(matrix, aux, key, beta=method.gradvac_beta)
        return Direction(adjusted.sum(0), jnp.ones_like(losses), None, rho)

    return gradient_method(_names(tasks), direction, init=init)


def _graddrop(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """GradDrop (Chen et al., "Just Pick a Sign", NeurIPS 2020) on the trunk's parameter
    gradients: one sign per coordinate survives, drawn from the gradients' sign purity
    (`balancing.graddrop`). LibMTL applies it to the representation's gradients only."""

    def direction(matrix, losses, *, aux, key, step):
        del step
        d = bal.graddrop(matrix, key, leak=method.graddrop_leak)
        return Direction(d, jnp.ones_like(losses), None, aux)

    return gradient_method(_names(tasks), direction)


def _aligned_mtl(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023): weights that make the gradient system's principal components
    equal (`balancing.aligned_mtl_weights`)."""
    if method.rep_grad:
        weights = lambda g, losses: bal.aligned_mtl_weights(g @ g.T)  # noqa: E731
        return rep_weighting(_names(tasks), weights)

    def direction(matrix, losses, *, aux, key, step):
        del losses, key, step
        alpha = bal.aligned_mtl_weights(matrix @ matrix.T)
        return Direction(alpha @ matrix, alpha, None, aux)

    return gradient_method(_names(tasks), direction)


class DbMtlState(NamedTuple):
    """DB-MTL's (T, P) EMA of the log-loss gradients."""

    buffer: jax.Array


def _db_mtl(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", 2023): gradients of
    ``log(L_t + 1e-8)`` (loss balancing), their EMA ``m <- g + beta / k^sigma (m - g)`` at
    step k, each rescaled to the largest EMA norm (gradient balancing).

    The log-loss gradient is taken as ``grad L_t / (L_t + 1e-8)`` from the device-averaged
    loss and gradient, so that data-parallel steps equal full-batch ones.
    """

    def init(params, num_tasks):
        size = sum(x.size for x in jax.tree.leaves(params["trunk"]))
        return params, DbMtlState(jnp.zeros((num_tasks, size), jnp.float32))

    def direction(matrix, losses, *, aux, key, step):
        del key
        inv = 1.0 / (losses + DB_EPS)
        g = matrix * inv[:, None]
        k = (step + 1).astype(jnp.float32)
        buffer = g + (method.db_beta / k**method.db_beta_sigma) * (aux.buffer - g)
        norms = jnp.linalg.norm(buffer, axis=1)
        alpha = jnp.max(norms) / (norms + DB_EPS)
        # Heads follow their own log-loss gradients, as LibMTL's backward of log(L_t) does.
        return Direction(alpha @ buffer, alpha, inv, DbMtlState(buffer))

    return gradient_method(_names(tasks), direction, init=init)


def rlw_weights(key: jax.Array, num_tasks: int) -> jax.Array:
    """RLW's weights: ``softmax`` of a standard normal draw (Lin et al., "Reasonable
    Effectiveness of Random Weighting", TMLR 2022)."""
    return jax.nn.softmax(jax.random.normal(key, (num_tasks,), jnp.float32))


def _rlw(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Random loss weighting: every step weights the losses by a fresh `rlw_weights` draw from
    the step key (one backward pass)."""
    del method
    names = _names(tasks)

    def combine(objective, params, *, aux, key, step, reduce):
        del step
        w = rlw_weights(key, len(names))
        return weighted(objective, params, w, reduce, names, aux)[0], None

    return Weighting(lambda params, num: (params, ()), combine)


BALANCERS = {
    "mgda": _mgda,
    "mgda_ub": _mgda_ub,
    "cagrad": _cagrad,
    "nash_mtl": _nash_mtl,
    "imtl": _imtl,
    "gradvac": _gradvac,
    "graddrop": _graddrop,
    "rlw": _rlw,
    "aligned_mtl": _aligned_mtl,
    "db_mtl": _db_mtl,
}
