"""Multi-task training through `jaxopt_ft.train.make_train_step`: task losses, the similarity
matrix, the alternating optimizer and the initial state.

``make_train_step(tasks, method)`` is the one step builder with :func:`task_losses` and the
method's combiner (`jaxopt_ft.multitask.methods`), wrapped so that the cosine similarity of the
per-task trunk gradients is measured on the way. Batches are ``{"x": (B, ...), "targets":
{task: (B,)}}``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.multitask import gradients as grads_lib
from jaxopt_ft.multitask.methods import WEIGHTINGS, Method, Weighting
from jaxopt_ft.multitask.model import MultiTaskModel, check_heads, last_shared_layer
from jaxopt_ft.multitask.tasks import Task, check_targets, task_loss

PyTree = Any


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
    trunk: optax.GradientTransformation,
    head: optax.GradientTransformation,
    names: Sequence[str],
) -> optax.GradientTransformationExtraArgs:
    """The ``alternating`` optimizer: the trunk steps every update, only head ``task`` steps.

    ``update(grads, state, params, *, task)``: ``task`` indexes ``names`` (the tasks in the
    model's order; pytrees hold the heads sorted by name, so the order is passed explicitly).
    Every head keeps its own optimizer state, which moves only on the steps that train its task
    (Adam's moments of a resting head do not decay).
    """

    def init(params):
        heads = {n: head.init(p) for n, p in params["heads"].items()}
        return {"trunk": trunk.init(params["trunk"]), "heads": heads}

    def update(grads, state, params=None, *, task, **extra):
        del extra
        trunk_updates, trunk_state = trunk.update(grads["trunk"], state["trunk"], params["trunk"])
        updates = {"trunk": trunk_updates, "heads": {}}
        new_state = {"trunk": trunk_state, "heads": {}}
        for i, n in enumerate(names):
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
        tx = alternating_tx(tx, head_tx or tx, [t.name for t in model.tasks])
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
