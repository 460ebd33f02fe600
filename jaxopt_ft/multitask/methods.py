"""Multi-task training: one small function per weighting method, through the one step builder.

A multi-task step is the library's one step builder with two pieces from here:
:func:`task_losses` (the vector of T task losses) and a *combiner* (:data:`WEIGHTINGS`) that
turns it into one gradient. Loss-level methods (``equal``, ``static``, ``uncertainty``,
``dwa``, ``alternating``) weight the losses and take one backward pass; gradient-level methods
(``gradnorm``, ``pcgrad``) take the per-task gradients in one `per_task_grads` pass. Every
method's state lives in ``state.aux["weighting"]``, the running gradient-similarity matrix in
``state.aux["similarity"]``, so `loop.fit` checkpoints and resumes them with the rest.

Under ``pmap`` (``axis_name``) task losses and gradients are averaged over devices *before*
they are combined, so the update equals single-device training on the full batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.multitask import gradients as grads_lib
from jaxopt_ft.multitask import weighting as wt
from jaxopt_ft.multitask.model import MultiTaskModel, check_heads, last_shared_layer
from jaxopt_ft.multitask.tasks import Task, check_targets, task_loss

PyTree = Any
ALTERNATE = ("round_robin", "sampled")


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
    """

    name: str = "equal"
    static_weights: Any = ()
    temperature: float = 2.0
    window: int = 1
    alpha: float = 1.5
    weight_lr: float = 0.025
    shared_layer: str = ""
    alternate: str = "round_robin"

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
        )
        for field, ok, want in checks:
            if not ok:
                raise ValueError(f"Method {field} must be {want}, got {getattr(self, field)!r}.")
        if self.alternate not in ALTERNATE:
            raise ValueError(
                f"alternate={self.alternate!r} is not accepted; choose {', '.join(ALTERNATE)}."
            )


class Weighting(NamedTuple):
    """One method: ``init(params, num_tasks) -> (params, state)`` and its combiner.

    ``combine`` has `train.mean_gradient`'s signature (with the objective returning the (T,)
    task losses) and returns ``(Combined, stacked trunk gradients or None)``; the stacked
    gradients, when a method has them anyway, feed the similarity matrix for free.
    """

    init: Callable[[PyTree, int], tuple[PyTree, PyTree]]
    combine: Callable[..., tuple[train.Combined, PyTree | None]]


def _no_state(params: PyTree, num_tasks: int) -> tuple[PyTree, PyTree]:
    del num_tasks
    return params, ()


def _metrics(names, losses: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for i, n in enumerate(names):
        out[f"loss_{n}"] = losses[i]
        out[f"weight_{n}"] = weights[i]
    return out


def _weighted(objective, params, weights, reduce, names, aux) -> tuple[train.Combined, jax.Array]:
    """One backward pass of ``sum_t w_t L_t``; returns (Combined, the averaged task losses)."""

    def total(p):
        losses, (_, model_state) = objective(p)
        return jnp.sum(weights * losses), (losses, model_state)

    (value, (losses, model_state)), grads = jax.value_and_grad(total, has_aux=True)(params)
    losses = reduce(losses)
    metrics = _metrics(names, losses, weights)
    return train.Combined(reduce(value), reduce(grads), metrics, model_state, aux, {}), losses


def _fixed(weights_of: Callable[[int], jax.Array]):
    """A loss-level method with constant weights (``equal``, ``static``)."""

    def make(method: Method, tasks: tuple[Task, ...]) -> Weighting:
        names = [t.name for t in tasks]
        weights = weights_of(method, names)

        def combine(objective, params, *, aux, key, step, reduce):
            del key, step
            return _weighted(objective, params, weights, reduce, names, aux)[0], None

        return Weighting(_no_state, combine)

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
        metrics = _metrics(names, reduce(losses), weights)
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
        c, losses = _weighted(objective, params, weights, reduce, names, aux)
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
        c, _ = _weighted(objective, params, weights, reduce, names, aux)
        return c._replace(tx_args={"task": task}), None

    return Weighting(_no_state, combine)


def _task_grads(objective, params, reduce):
    """(averaged losses, averaged stacked gradients, model state) in one jacrev pass."""
    losses, stacked, (_, model_state) = grads_lib.per_task_grads(objective, params, has_aux=True)
    return reduce(losses), reduce(stacked), model_state


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
        losses, stacked, model_state = _task_grads(objective, params, reduce)
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
        metrics = _metrics(names, losses, weights)
        state = wt.GradNormState(new, initial)
        return train.Combined(value, grads, metrics, model_state, state, {}), stacked["trunk"]

    return Weighting(init, combine)


def _pcgrad(method: Method, tasks: tuple[Task, ...]) -> Weighting:
    """Yu et al. (2020): conflicting trunk gradients are projected onto each other's normals."""
    del method
    names = [t.name for t in tasks]

    def combine(objective, params, *, aux, key, step, reduce):
        del step
        losses, stacked, model_state = _task_grads(objective, params, reduce)
        matrix = grads_lib.stacked_to_matrix(stacked["trunk"])
        projected = grads_lib.pcgrad_project(matrix, key)
        grads = {
            "trunk": grads_lib.matrix_row_to_tree(projected.sum(0), stacked["trunk"]),
            "heads": jax.tree.map(lambda g: g.sum(0), stacked["heads"]),
        }
        ones = jnp.ones((len(names),), jnp.float32)
        metrics = _metrics(names, losses, ones)
        value = jnp.sum(losses)
        return train.Combined(value, grads, metrics, model_state, aux, {}), stacked["trunk"]

    return Weighting(_no_state, combine)


WEIGHTINGS: dict[str, Callable[[Method, tuple[Task, ...]], Weighting]] = {
    "equal": _fixed(_equal_weights),
    "static": _fixed(_static_weights),
    "uncertainty": _uncertainty,
    "dwa": _dwa,
    "gradnorm": _gradnorm,
    "pcgrad": _pcgrad,
    "alternating": _alternating,
}
METHODS: tuple[str, ...] = tuple(WEIGHTINGS)


def task_losses(tasks: tuple[Task, ...]) -> train.Loss:
    """``(outputs, batch) -> ((T,) task losses, {})`` for ``batch["targets"][task]``."""

    def loss(outputs, batch):
        check_targets(batch["targets"], tasks)
        losses = [task_loss(t, outputs[t.name], batch["targets"][t.name]).mean() for t in tasks]
        return jnp.stack(losses), {}

    return loss


def _trunk_similarity(objective, params, reduce) -> jax.Array:
    """Cosine matrix of the per-task trunk gradients (heads held fixed)."""
    fn = lambda trunk: objective({**params, "trunk": trunk})[0]  # noqa: E731
    _, stacked = grads_lib.per_task_grads(fn, params["trunk"])
    return grads_lib.cosine_matrix(grads_lib.stacked_to_matrix(reduce(stacked)))


def _with_similarity(weighting: Weighting, tasks: tuple[Task, ...], every: int) -> train.Combine:
    """Wraps a method's combiner: its state under ``"weighting"``, the similarity beside it."""
    num = len(tasks)

    def combine(objective, params, *, aux, key, step, reduce):
        check_heads(params, tasks)
        c, stacked = weighting.combine(
            objective, params, aux=aux["weighting"], key=key, step=step, reduce=reduce
        )
        track = (step % every == 0) if every else jnp.asarray(False)
        sim = jnp.zeros((num, num), jnp.float32)
        if every and stacked is not None:
            matrix = grads_lib.cosine_matrix(grads_lib.stacked_to_matrix(stacked))
            sim = jnp.where(track, matrix, sim)
        elif every:  # the per-task pass runs only on the measured steps
            measure = functools.partial(_trunk_similarity, objective, params, reduce)
            sim = jax.lax.cond(track, measure, lambda: jnp.zeros((num, num), jnp.float32))
        old = aux["similarity"]
        similarity = grads_lib.SimilarityState(
            old.total + sim, old.count + jnp.asarray(track, jnp.int32)
        )
        return c._replace(aux={"weighting": c.aux, "similarity": similarity})

    return combine


def make_train_step(
    tasks: tuple[Task, ...],
    method: Method,
    *,
    similarity_every: int = 0,
    axis_name: str | None = None,
) -> train.StepFn:
    """`train.make_train_step` with the task losses and ``method``'s combiner.

    Batches are ``{"x": (B, ...), "targets": {task: (B,)}}``. Metrics: ``loss`` (the
    objective), ``loss_<task>`` and ``weight_<task>``.

    Args:
        tasks: the tasks, in the model's order.
        method: the weighting method (for ``gradnorm`` with its ``shared_layer`` resolved, as
            :func:`init_state` returns it).
        similarity_every: add the cosine matrix of the per-task trunk gradients to
            ``state.aux["similarity"]`` every that many steps (0: never). PCGrad and GradNorm
            have the gradients anyway; other methods pay one extra per-task pass on those steps.
        axis_name: the device axis under ``pmap`` (losses and gradients are averaged over it
            before they are combined).

    Raises:
        ValueError: static weights that do not match the tasks, a bad ``similarity_every``.
    """
    if isinstance(similarity_every, bool) or not isinstance(similarity_every, int):
        raise ValueError(f"similarity_every must be an integer >= 0, got {similarity_every!r}.")
    if similarity_every < 0:
        raise ValueError(f"similarity_every must be >= 0, got {similarity_every!r}.")
    weighting = WEIGHTINGS[method.name](method, tasks)
    return train.make_train_step(
        task_losses(tasks),
        combine=_with_similarity(weighting, tasks, similarity_every),
        axis_name=axis_name,
    )


def alternating_tx(
    trunk: optax.GradientTransformation, head: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
    """The ``alternating`` optimizer: the trunk steps every update, only head ``task`` steps.

    ``update(grads, state, params, *, task)``: every head keeps its own optimizer state, which
    moves only on the steps that train its task (Adam's moments of a resting head do not decay).
    """

    def init(params):
        heads = {n: head.init(p) for n, p in params["heads"].items()}
        return {"trunk": trunk.init(params["trunk"]), "heads": heads}

    def update(grads, state, params=None, *, task, **extra):
        del extra
        trunk_updates, trunk_state = trunk.update(grads["trunk"], state["trunk"], params["trunk"])
        updates = {"trunk": trunk_updates, "heads": {}}
        new_state = {"trunk": trunk_state, "heads": {}}
        for i, n in enumerate(grads["heads"]):
            old = state["heads"][n]
            stepped, stepped_state = head.update(grads["heads"][n], old, params["heads"][n])
            chosen = task == i
            zeros = jax.tree.map(jnp.zeros_like, stepped)
            updates["heads"][n] = jax.tree.map(functools.partial(jnp.where, chosen), stepped, zeros)
            new_state["heads"][n] = jax.tree.map(
                functools.partial(jnp.where, chosen), stepped_state, old
            )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def init_state(
    model: MultiTaskModel,
    method: Method,
    *,
    key: jax.Array,
    sample_x: jax.typing.ArrayLike,
    tx: optax.GradientTransformation,
    head_tx: optax.GradientTransformation | None = None,
) -> tuple[train.TrainState, Method]:
    """Initialises the model and the method's state.

    Args:
        model: the multi-task model.
        method: the weighting method.
        key: init key.
        sample_x: a batch of inputs (shapes only).
        tx: the optimizer (for ``alternating``: of the trunk).
        head_tx: ``alternating`` only: the heads' optimizer (default ``tx``). Each head steps
            only when its task is chosen, so give it a schedule over about steps / T steps.

    Returns:
        ``(state, method)``: a `train.TrainState` (``aux`` holds the method's state and the
        similarity sums) and ``method`` with ``shared_layer`` resolved for :func:`make_train_step`.

    Raises:
        ValueError: ``method.shared_layer`` is not a trunk kernel.
    """
    params, batch_stats = train.init_model(model, key, sample_x)
    # Flax records submodules in creation order, so read the default from the fresh params.
    shared = method.shared_layer or last_shared_layer(params["trunk"])
    if shared not in tree_lib.flatten(params["trunk"]):
        raise ValueError(
            f"shared_layer={shared!r} is not a trunk parameter; trunk parameters: "
            f"{', '.join(tree_lib.paths(params['trunk']))}."
        )
    method = dataclasses.replace(method, shared_layer=shared)
    num = len(model.tasks)
    params, weighting = WEIGHTINGS[method.name](method, model.tasks).init(params, num)
    if method.name == "alternating":
        tx = alternating_tx(tx, head_tx or tx)
    state = train.TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx,
        batch_stats=batch_stats,
        aux={"weighting": weighting, "similarity": grads_lib.similarity_init(num)},
    )
    return state, method


def model_params(params: PyTree) -> PyTree:
    """Trunk and heads only (without the uncertainty method's log-variances)."""
    return {"trunk": params["trunk"], "heads": params["heads"]}
