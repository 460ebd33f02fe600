"""Multi-task training state, the jitted train step for every method, and evaluation.

``make_train_step(tasks, method)`` returns a pure ``train_step(state, batch, key) -> (state,
metrics)`` that `jaxopt_ft.train.fit` drives like any other step. Batches are ``{"x": (B, ...),
"targets": {task: (B,)}}``. With ``axis_name`` the step runs inside ``jax.pmap``/``shard_map``:
task losses and gradients (per-task gradients for PCGrad and GradNorm) are averaged over that
axis *before* they are combined, so the update equals single-device training on the full batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxopt_ft import train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.multitask import gradients as grads_lib
from jaxopt_ft.multitask import weighting as wt
from jaxopt_ft.multitask.model import MultiTaskModel, check_heads, last_shared_layer
from jaxopt_ft.multitask.tasks import Task, check_targets, task_loss

PyTree = Any
METHODS = ("equal", "static", "uncertainty", "dwa", "gradnorm", "pcgrad", "alternating")
ALTERNATE = ("round_robin", "sampled")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """How tasks are combined; only the fields of the chosen method matter.

    Attributes:
        name: one of `METHODS`.
        static_weights: ``static``: ``{task: weight}`` (stored as sorted pairs).
        temperature: ``dwa``: softmax temperature T (Liu et al. use 2).
        window: ``dwa``: steps per loss window (one epoch in the paper).
        alpha: ``gradnorm``: restoring-force exponent (Chen et al. use 0.12 to 3).
        weight_lr: ``gradnorm``: learning rate of the task weights.
        shared_layer: ``gradnorm``: trunk-relative path of the shared kernel whose gradient norms
            are balanced; ``""`` picks the trunk's last layer.
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
        if self.name not in METHODS:
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


class AlternatingTx(NamedTuple):
    """Separate optimizers for the trunk and the heads (each head keeps its own state)."""

    trunk: optax.GradientTransformation
    head: optax.GradientTransformation


class MultiTaskState(struct.PyTreeNode):
    """Train state of a multi-task model; `jaxopt_ft.train.fit` checkpoints and resumes it.

    ``weighting`` holds the method's state (DWA windows, GradNorm weights), ``similarity`` the
    running sum of per-step gradient-cosine matrices. ``params["log_vars"]`` exists for the
    uncertainty method only.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    batch_stats: PyTree
    weighting: PyTree
    similarity: grads_lib.SimilarityState
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    shared_layer: str = struct.field(pytree_node=False, default="")

    def variables(self, params: PyTree | None = None) -> dict[str, PyTree]:
        params = self.params if params is None else params
        out = {"params": {"trunk": params["trunk"], "heads": params["heads"]}}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out

    def model_params(self) -> PyTree:
        """Trunk and heads only (without the uncertainty method's log-variances)."""
        return {"trunk": self.params["trunk"], "heads": self.params["heads"]}

    def tree(self) -> dict[str, PyTree]:
        return {
            "step": self.step,
            "params": self.params,
            "opt_state": self.opt_state,
            "batch_stats": self.batch_stats,
            "weighting": self.weighting,
            "similarity": self.similarity,
        }

    def replace_tree(self, tree: dict[str, PyTree]) -> MultiTaskState:
        tree = dict(tree)
        tree["similarity"] = grads_lib.SimilarityState(*tree["similarity"])
        tree["weighting"] = type(self.weighting)(*tree["weighting"])
        return self.replace(**tree)


def init_state(
    model: MultiTaskModel,
    method: Method,
    *,
    key: jax.Array,
    sample_x: jax.typing.ArrayLike,
    tx: optax.GradientTransformation,
    head_tx: optax.GradientTransformation | None = None,
) -> MultiTaskState:
    """Initialises the model and the method's state.

    Args:
        model: the multi-task model.
        method: the weighting method.
        key: init key.
        sample_x: a batch of inputs (shapes only).
        tx: the optimizer (for ``alternating``: of the trunk).
        head_tx: ``alternating`` only: the heads' optimizer (default ``tx``). Each head steps
            only when its task is chosen, so give it a schedule over about steps / T steps.
    """
    params, batch_stats = train.init_model(model, key, sample_x)
    shared = method.shared_layer or last_shared_layer(params["trunk"])
    if shared not in tree_lib.flatten(params["trunk"]):
        raise ValueError(
            f"shared_layer={shared!r} is not a trunk parameter; trunk parameters: "
            f"{', '.join(tree_lib.paths(params['trunk']))}."
        )
    names = [t.name for t in model.tasks]
    num = len(names)
    if method.name == "uncertainty":
        params = {**params, "log_vars": {n: jnp.zeros((), jnp.float32) for n in names}}
    if method.name == "alternating":
        head_tx = head_tx or tx
        opt_state = {
            "trunk": tx.init(params["trunk"]),
            "heads": {n: head_tx.init(params["heads"][n]) for n in names},
        }
        tx = AlternatingTx(tx, head_tx)
    else:
        opt_state = tx.init(params)
    if method.name == "dwa":
        weighting = wt.dwa_init(num)
    elif method.name == "gradnorm":
        weighting = wt.gradnorm_init(num)
    else:
        weighting = ()
    return MultiTaskState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        batch_stats=batch_stats,
        weighting=weighting,
        similarity=grads_lib.similarity_init(num),
        apply_fn=model.apply,
        tx=tx,
        shared_layer=shared,
    )


def make_train_step(
    tasks: tuple[Task, ...],
    method: Method,
    *,
    similarity_every: int = 0,
    axis_name: str | None = None,
) -> Callable:
    """Returns ``train_step(state, batch, key) -> (state, metrics)`` for ``method``.

    Per-task gradients (PCGrad, GradNorm, and the similarity matrix) come from one
    `per_task_grads` pass; the loss-level methods take a plain ``value_and_grad`` of the
    weighted total. Metrics are ``loss`` (the objective), ``loss_<task>`` and ``weight_<task>``.

    Args:
        tasks: the tasks, in the model's order.
        method: the weighting method.
        similarity_every: add the cosine matrix of the per-task trunk gradients to
            ``state.similarity`` every that many steps (0: never). PCGrad and GradNorm have the
            gradients anyway; other methods pay one extra per-task pass on those steps.
        axis_name: the device axis to average losses and gradients over, when the step runs
            under ``jax.pmap`` or ``shard_map`` with the batch split across devices. Pass the
            same (replicated) ``key`` to every device: PCGrad's task order and the sampled
            task of ``alternating`` come from it and must agree across devices.

    Raises:
        ValueError: for static weights that do not match the tasks, or a bad
            ``similarity_every``.
    """
    names = [t.name for t in tasks]
    num = len(tasks)
    if isinstance(similarity_every, bool) or not isinstance(similarity_every, int):
        raise ValueError(f"similarity_every must be an integer >= 0, got {similarity_every!r}.")
    if similarity_every < 0:
        raise ValueError(f"similarity_every must be >= 0, got {similarity_every!r}.")
    static = None
    if method.name == "static":
        w = wt.static_weights(dict.fromkeys(names, 0.0), dict(method.static_weights))
        static = jnp.stack([w[n] for n in names])
    kinds = {t.name: t.kind for t in tasks}

    def pmean(x):
        return jax.lax.pmean(x, axis_name) if axis_name else x

    def train_step(state: MultiTaskState, batch: dict, key: jax.Array):
        check_heads(state.params, tasks)
        check_targets(batch["targets"], tasks)
        k_order, k_drop, k_task = jax.random.split(key, 3)
        mutable = ["batch_stats"] if state.batch_stats else False

        def task_losses(model_params):
            out = state.apply_fn(
                state.variables(model_params),
                batch["x"],
                train=True,
                rngs={"dropout": k_drop},
                mutable=mutable,
            )
            outputs, new_vars = out if mutable else (out, {})
            losses = jnp.stack(
                [task_loss(t, outputs[t.name], batch["targets"][t.name]).mean() for t in tasks]
            )
            return losses, new_vars.get("batch_stats", state.batch_stats)

        def trunk_similarity():
            heads = state.params["heads"]
            fn = lambda trunk: task_losses({"trunk": trunk, "heads": heads})[0]  # noqa: E731
            _, stacked = grads_lib.per_task_grads(fn, state.params["trunk"])
            return grads_lib.cosine_matrix(grads_lib.stacked_to_matrix(pmean(stacked)))

        track = jnp.asarray(False)
        if similarity_every:
            track = state.step % similarity_every == 0
        params, opt_state, weighting = state.params, state.opt_state, state.weighting

        if method.name in ("pcgrad", "gradnorm"):
            losses, stacked, batch_stats = grads_lib.per_task_grads(
                task_losses, state.model_params(), has_aux=True
            )
            losses, stacked = pmean(losses), pmean(stacked)
            trunk_matrix = grads_lib.stacked_to_matrix(stacked["trunk"])
            sim = jnp.zeros((num, num))
            if similarity_every:
                sim = jnp.where(track, grads_lib.cosine_matrix(trunk_matrix), sim)
            if method.name == "pcgrad":
                weights = jnp.ones((num,), jnp.float32)
                projected = grads_lib.pcgrad_project(trunk_matrix, k_order)
                grads = {
                    "trunk": grads_lib.matrix_row_to_tree(projected.sum(0), stacked["trunk"]),
                    "heads": jax.tree.map(lambda g: g.sum(0), stacked["heads"]),
                }
            else:
                weights = weighting.weights
                grads = jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), stacked)
                layer = tree_lib.flatten(stacked["trunk"])[state.shared_layer]
                norms = jnp.sqrt(jnp.sum(jnp.square(layer.reshape(num, -1)), axis=1))
                initial = jnp.where(state.step == 0, losses, weighting.initial)
                new_w = wt.gradnorm_step(
                    weights,
                    losses=losses,
                    initial=initial,
                    norms=norms,
                    alpha=method.alpha,
                    learning_rate=method.weight_lr,
                )
                weighting = wt.GradNormState(new_w, initial)
            total = jnp.sum(weights * losses)
        else:
            if method.name == "alternating":
                if method.alternate == "round_robin":
                    task = state.step % num
                else:
                    task = jax.random.randint(k_task, (), 0, num)
                weights = jax.nn.one_hot(task, num, dtype=jnp.float32)
            elif method.name == "static":
                weights = static
            elif method.name == "dwa":
                weights = wt.dwa_current(weighting, temperature=method.temperature)
            else:  # equal; uncertainty's effective weights are computed below
                weights = jnp.ones((num,), jnp.float32)

            def objective(p):
                losses, batch_stats = task_losses({"trunk": p["trunk"], "heads": p["heads"]})
                if method.name == "uncertainty":
                    total = wt.uncertainty_loss(
                        dict(zip(names, losses, strict=True)), p["log_vars"], kinds=kinds
                    )
                else:
                    total = jnp.sum(weights * losses)
                return total, (losses, batch_stats)

            (total, (losses, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
                params
            )
            grads, losses, total = pmean(grads), pmean(losses), pmean(total)
            sim = jnp.zeros((num, num))
            if similarity_every:  # the per-task pass runs only on the measured steps
                sim = jax.lax.cond(track, trunk_similarity, lambda: jnp.zeros((num, num)))
            if method.name == "uncertainty":
                weights = jnp.stack(
                    [
                        wt.UNCERTAINTY_FACTOR[kinds[n]] * jnp.exp(-params["log_vars"][n])
                        for n in names
                    ]
                )
            if method.name == "dwa":
                weighting = wt.dwa_update(weighting, losses, window=method.window)

        if method.name == "alternating":
            params, opt_state = _alternating_update(state, grads, task, names)
        else:
            updates, opt_state = state.tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        if state.batch_stats:
            batch_stats = pmean(batch_stats)
        similarity = grads_lib.SimilarityState(
            state.similarity.total + sim, state.similarity.count + track.astype(jnp.int32)
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            batch_stats=batch_stats,
            weighting=weighting,
            similarity=similarity,
        )
        metrics = {"loss": total}
        for i, n in enumerate(names):
            metrics[f"loss_{n}"] = losses[i]
            metrics[f"weight_{n}"] = weights[i]
        return new_state, metrics

    return train_step


def _alternating_update(state: MultiTaskState, grads, task, names):
    """Updates the trunk and the chosen task's head (and only that head's optimizer state)."""
    params, opt = state.params, state.opt_state
    updates, trunk_opt = state.tx.trunk.update(grads["trunk"], opt["trunk"], params["trunk"])
    new_params = {"trunk": optax.apply_updates(params["trunk"], updates), "heads": {}}
    new_opt = {"trunk": trunk_opt, "heads": {}}
    for i, n in enumerate(names):
        head, head_opt = params["heads"][n], opt["heads"][n]
        updates, stepped_opt = state.tx.head.update(grads["heads"][n], head_opt, head)
        stepped = optax.apply_updates(head, updates)
        pick = functools.partial(jnp.where, task == i)
        new_params["heads"][n] = jax.tree.map(pick, stepped, head)
        new_opt["heads"][n] = jax.tree.map(pick, stepped_opt, head_opt)
    return new_params, new_opt
