"""Multi-task weighting methods: one small combiner per method, chosen from :data:`WEIGHTINGS`.

A multi-task step (`jaxopt_ft.multitask.training`) is the library's one step builder with the
vector of T task losses and a *combiner* from here that turns it into one gradient. Loss-level
methods (``equal``, ``static``, ``uncertainty``, ``dwa``, ``alternating``) weight the losses
and take one backward pass; gradient-level methods (``gradnorm``, ``pcgrad`` and the balancers of
`jaxopt_ft.multitask.balancers`: ``mgda``, ``cagrad``, ``nash_mtl``, ``imtl``, ``gradvac``,
``graddrop``, ``aligned_mtl``, ``db_mtl``; ``rlw`` weights losses at random) take the per-task
gradients in one `per_task_grads` pass. Every
method's state lives in ``state.aux["weighting"]``, the running gradient-similarity matrix in
``state.aux["similarity"]``, so `loop.fit` checkpoints and resumes them with the rest.

Under ``pmap`` task losses and gradients are averaged over devices (``reduce``) *before* they are
combined, so the update equals single-device training on the full batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_ft import train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.multitask import gradients as grads_lib
from jaxopt_ft.multitask import weighting as wt
from jaxopt_ft.multitask.balancers import BALANCERS, REP_GRAD_METHODS
from jaxopt_ft.multitask.combining import Weighting, metrics_of, no_state, task_grads, weighted
from jaxopt_ft.multitask.tasks import Task

PyTree = Any
ALTERNATE = ("round_robin", "sampled")
MGDA_NORMALIZE = ("none", "l2", "loss", "loss+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """How tasks are combined; only the fields of the chosen method matter.

    Attributes:
        name: one of :data:`METHODS`.
        static_weights: ``static``: ``{task: weight}`` (stored as sorted pairs).
        temperature: ``dwa``: softmax temperature T (Liu et al. use 2).
        window: ``dwa``: steps per loss window (one epoch in the paper).
        alpha: ``gradnorm``: restoring-force exponent (Chen et al. use 0.12 to 3).
        weight_lr: ``gradnorm``: learning rate of the task weights.
        shared_layer: ``gradnorm``: trunk-relative path of the shared kernel whose gradient norms
            are balanced; ``""`` picks the trunk's last layer (:func:`init_state` resolves it).
        alternate: ``alternating``: ``round_robin`` (task = step mod T) or ``sampled`` (uniform,
            from the step key).
        mgda_normalize: ``mgda``: gradient normalisation, one of :data:`MGDA_NORMALIZE`.
        cagrad_alpha: ``cagrad``: radius c of the conflict-averse ball (0: the mean gradient).
        cagrad_rescale: ``cagrad``: 0 (none), 1 (divide by 1 + c^2), 2 (divide by 1 + c).
        nash_max_norm: ``nash_mtl``: the trunk update's norm clip (0: none).
        gradvac_beta: ``gradvac``: EMA rate of the cosine targets, in (0, 1].
        graddrop_leak: ``graddrop``: kept fraction of a dropped sign, in [0, 1].
        db_beta: ``db_mtl``: EMA decay of the log-loss gradients, in [0, 1).
        db_beta_sigma: ``db_mtl``: decay exponent of ``beta / step^sigma``, >= 0.
        rep_grad: take the per-task gradients with respect to the shared representation
            instead of the trunk parameters (`jaxopt_ft.multitask.representation`); for the
            weight-producing methods in :data:`REP_GRAD_METHODS`.
    """

    name: str = "equal"
    static_weights: Any = ()
    temperature: float = 2.0
    window: int = 1
    alpha: float = 1.5
    weight_lr: float = 0.025
    shared_layer: str = ""
    alternate: str = "round_robin"
    mgda_normalize: str = "none"
    cagrad_alpha: float = 0.5
    cagrad_rescale: int = 1
    nash_max_norm: float = 1.0
    gradvac_beta: float = 0.5
    graddrop_leak: float = 0.0
    db_beta: float = 0.9
    db_beta_sigma: float = 0.0
    rep_grad: bool = False

    def __post_init__(self):
        if self.name not in WEIGHTINGS:
            raise ValueError(f"Unknown method {self.name!r}; accepted: {', '.join(METHODS)}.")
        pairs = self.static_weights
        if isinstance(pairs, Mapping):
            pairs = tuple(sorted((str(k), v) for k, v in pairs.items()))
        object.__setattr__(self, "static_weights", tuple(pairs))
        checks = (
            ("temperature", self.temperature > 0, "> 0"),
            ("window", isinstance(self.window, int) and self.window >= 1, "an integer >= 1"),
            ("alpha", self.alpha >= 0, ">= 0"),
            ("weight_lr", self.weight_lr > 0, "> 0"),
            ("cagrad_alpha", self.cagrad_alpha >= 0, ">= 0"),
            ("cagrad_rescale", self.cagrad_rescale in (0, 1, 2), "0, 1 or 2"),
            ("nash_max_norm", self.nash_max_norm >= 0, ">= 0 (0: no clipping)"),
            ("gradvac_beta", 0 < self.gradvac_beta <= 1, "in (0, 1]"),
            ("graddrop_leak", 0 <= self.graddrop_leak <= 1, "in [0, 1]"),
            ("db_beta", 0 <= self.db_beta < 1, "in [0, 1)"),
            ("db_beta_sigma", self.db_beta_sigma >= 0, ">= 0"),
        )
        for field, ok, want in checks:
            if not ok:
                raise ValueError(f"Method {field} must be {want}, got {getattr(self, field)!r}.")
        if self.mgda_normalize not in MGDA_NORMALIZE:
            raise ValueError(
                f"mgda_normalize={self.mgda_normalize!r} is not accepted; choose "
                f"{', '.join(MGDA_NORMALIZE)}."
            )
        if self.rep_grad and self.name not in REP_GRAD_METHODS:
            raise ValueError(
                f"rep_grad=True is not supported by method {self.name!r}; representation "
                f"gradients serve {', '.join(REP_GRAD_METHODS)}: set rep_grad=False."
            )
        if self.alternate not in ALTERNATE:
            raise ValueError(
                f"alternate={self.alternate!r} is not accepted; choose {', '.join(ALTERNATE)}."
            )


def _fixed(weights_of: Callable[[int], jax.Array]):
    """A loss-level method with constant weights (``equal``, ``static``)."""

    def make(method: Method, tasks: tuple[Task, ...]) -> Weighting:
        names = [t.name for t in tasks]
        weights = weights_of(method, names)

        def combine(objective, params, *, aux, key, step, reduce):
            del key, step
            return weighted(objective, params, weights, reduce, names, aux)[0], None

        return Weighting(no_state, combine)

    return make


def _equal_weights(method: Method, names) -> jax.Array:
    del method
    return jnp.ones((len(names),), jnp.float32)


def _static_weights(method: Method, names) -> jax.Array:
    w = wt.static_weights(dict.fromkeys(names, 0.0), dict(method.static_weights))
    return jnp.stack([w[n] for n in names])


def _uncertainty(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Kendall et al. (2018): learned log-variances ``params["log_vars"]`` weight the tasks."""
    del method
    names = [t.name for t in tasks]
    kinds = {t.name: t.kind for t in tasks}
    factors = jnp.array([wt.UNCERTAINTY_FACTOR[kinds[n]] for n in names], jnp.float32)

    def init(params, num_tasks):
        del num_tasks
        return {**params, "log_vars": {n: jnp.zeros((), jnp.float32) for n in names}}, ()

    def combine(objective, params, *, aux, key, step, reduce):
        del key, step

        def total(p):
            losses, (_, model_state) = objective(p)
            named = dict(zip(names, losses, strict=True))
            return wt.uncertainty_loss(named, p["log_vars"], kinds=kinds), (losses, model_state)

        (value, (losses, model_state)), grads = jax.value_and_grad(total, has_aux=True)(params)
        weights = factors * jnp.exp(-jnp.stack([params["log_vars"][n] for n in names]))
        metrics = metrics_of(names, reduce(losses), weights)
        return train.Combined(reduce(value), reduce(grads), metrics, model_state, aux, {}), None

    return Weighting(init, combine)


def _dwa(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Liu et al. (2019): weights from the ratio of the last two windows' mean losses."""
    names = [t.name for t in tasks]

    def init(params, num_tasks):
        return params, wt.dwa_init(num_tasks)

    def combine(objective, params, *, aux, key, step, reduce):
        del key, step
        weights = wt.dwa_current(aux, temperature=method.temperature)
        c, losses = weighted(objective, params, weights, reduce, names, aux)
        return c._replace(aux=wt.dwa_update(aux, losses, window=method.window)), None

    return Weighting(init, combine)


def _alternating(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """One task per step (round robin or sampled); its head and the trunk move."""
    names = [t.name for t in tasks]
    num = len(tasks)

    def combine(objective, params, *, aux, key, step, reduce):
        if method.alternate == "round_robin":
            task = step % num
        else:
            task = jax.random.randint(key, (), 0, num)
        weights = jax.nn.one_hot(task, num, dtype=jnp.float32)
        c, _ = weighted(objective, params, weights, reduce, names, aux)
        return c._replace(tx_args={"task": task}), None

    return Weighting(no_state, combine)


def _gradnorm(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Chen et al. (2018): weights move to balance the tasks' gradient norms on a shared layer."""
    names = [t.name for t in tasks]
    if not method.shared_layer:
        raise ValueError(
            "gradnorm needs Method.shared_layer (a trunk kernel path); init_state resolves the "
            "default (the trunk's last layer): pass the Method it returns."
        )

    def init(params, num_tasks):
        return params, wt.gradnorm_init(num_tasks)

    def combine(objective, params, *, aux, key, step, reduce):
        del key
        losses, stacked, model_state = task_grads(objective, params, reduce)
        weights = aux.weights
        grads = jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), stacked)
        layer = tree_lib.flatten(stacked["trunk"])[method.shared_layer]
        norms = jnp.sqrt(jnp.sum(jnp.square(layer.reshape(len(names), -1)), axis=1))
        initial = jnp.where(step == 0, losses, aux.initial)
        new = wt.gradnorm_step(
            weights,
            losses=losses,
            initial=initial,
            norms=norms,
            alpha=method.alpha,
            learning_rate=method.weight_lr,
        )
        value = jnp.sum(weights * losses)
        metrics = metrics_of(names, losses, weights)
        state = wt.GradNormState(new, initial)
        return train.Combined(value, grads, metrics, model_state, state, {}), stacked["trunk"]

    return Weighting(init, combine)


def _pcgrad(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Yu et al. (2020): conflicting trunk gradients are projected onto each other's normals."""
    del method
    names = [t.name for t in tasks]

    def combine(objective, params, *, aux, key, step, reduce):
        del step
        losses, stacked, model_state = task_grads(objective, params, reduce)
        matrix = grads_lib.stacked_to_matrix(stacked["trunk"])
        projected = grads_lib.pcgrad_project(matrix, key)
        grads = {
            "trunk": grads_lib.matrix_row_to_tree(projected.sum(0), stacked["trunk"]),
            "heads": jax.tree.map(lambda g: g.sum(0), stacked["heads"]),
        }
        ones = jnp.ones((len(names),), jnp.float32)
        metrics = metrics_of(names, losses, ones)
        value = jnp.sum(losses)
        return train.Combined(value, grads, metrics, model_state, aux, {}), stacked["trunk"]

    return Weighting(no_state, combine)


WEIGHTINGS: dict[str, Callable[[Method, tuple[Task, ...]], Weighting]] = {
    "equal": _fixed(_equal_weights),
    "static": _fixed(_static_weights),
    "uncertainty": _uncertainty,
    "dwa": _dwa,
    "gradnorm": _gradnorm,
    "pcgrad": _pcgrad,
    "alternating": _alternating,
    **BALANCERS,
}
METHODS: tuple[str, ...] = tuple(WEIGHTINGS)
