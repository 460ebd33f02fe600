"""Training state and pure train/eval steps; the loop itself is `jaxopt_ft.loop.fit`.

A step is a pure function ``train_step(state, batch, key) -> (state, metrics)``; `fit` (defined
in :mod:`jaxopt_ft.loop`, re-exported here) jits it with the state donated and drives it from
Python (one compiled call per step). Everything that changes how parameters move lives in the
optax transformation, so the loop, checkpoints and data-parallel wrappers never need to know
about pruning masks or frozen groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxopt_ft import optim
from jaxopt_ft.loop import NAN_POLICIES as NAN_POLICIES
from jaxopt_ft.loop import NonFiniteError as NonFiniteError
from jaxopt_ft.loop import fit as fit

PyTree = Any
Batch = dict[str, Any]
StepFn = Callable[..., tuple[Any, dict[str, jax.Array]]]


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer state and model state (BatchNorm statistics) of one model.

    ``batch_stats`` is ``{}`` for models without BatchNorm. ``apply_fn`` and ``tx`` are static.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    batch_stats: PyTree
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Callable,
        params: PyTree,
        tx: optax.GradientTransformation,
        batch_stats: PyTree | None = None,
    ) -> TrainState:
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            batch_stats={} if batch_stats is None else batch_stats,
            apply_fn=apply_fn,
            tx=tx,
        )

    def variables(self, params: PyTree | None = None) -> dict[str, PyTree]:
        """The ``variables`` dict for ``apply_fn`` (``params`` overrides the state's)."""
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out

    def tree(self) -> dict[str, PyTree]:
        """The array part of the state, as saved in checkpoints."""
        return {
            "step": self.step,
            "params": self.params,
            "opt_state": self.opt_state,
            "batch_stats": self.batch_stats,
        }

    def replace_tree(self, tree: dict[str, PyTree]) -> TrainState:
        return self.replace(**tree)


def init_model(model: nn.Module, key: jax.Array, sample_x: jax.typing.ArrayLike) -> tuple:
    """Initialises ``model`` on ``sample_x``; returns ``(params, batch_stats)``."""
    variables = model.init(key, jnp.asarray(sample_x), train=False)
    return variables["params"], variables.get("batch_stats", {})


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy; ``labels`` are int classes or soft (B, C) targets."""
    num_classes = logits.shape[-1]
    if labels.ndim == logits.ndim:
        targets = labels.astype(logits.dtype)
    else:
        targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits, targets)


def _hard_labels(labels: jax.Array, logits: jax.Array) -> jax.Array:
    return jnp.argmax(labels, -1) if labels.ndim == logits.ndim else labels


def make_train_step(
    *,
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
    label_smoothing: float = 0.0,
    apply_fn: Callable | None = None,
    axis_name: str | None = None,
) -> StepFn:
    """Returns a pure ``train_step(state, batch, key) -> (state, metrics)``.

    Args:
      augment: optional ``(key, batch) -> batch`` applied on device inside the step.
      label_smoothing: label smoothing of the cross-entropy loss.
      apply_fn: overrides ``state.apply_fn`` (e.g. a quantization-aware forward pass with the
        same signature as ``model.apply``).
      axis_name: under ``pmap`` (``strategy.axis_name``), the device axis whose index is folded
        into the augmentation and dropout keys, so each device draws for its own examples
        instead of repeating one device's draws.
    """

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        k_aug, k_drop = jax.random.split(key)
        if augment is not None:
            batch = augment(k_aug, batch)
        fwd = apply_fn or state.apply_fn
        mutable = ["batch_stats"] if state.batch_stats else False

        def loss_fn(params):
            out = fwd(
                state.variables(params),
                batch["x"],
                train=True,
                rngs={"dropout": k_drop},
                mutable=mutable,
            )
            logits, model_state = out if mutable else (out, {})
            loss = cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
            return loss.mean(), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        batch_stats = model_state.get("batch_stats", state.batch_stats)
        metrics = {}
        guard = optim.nonfinite_counts(opt_state)
        if guard is not None:
            # A skipped update must not leave NaN running statistics behind either.
            batch_stats = jax.tree.map(
                lambda new, old: jnp.where(guard["applied"], new, old),
                batch_stats,
                state.batch_stats,
            )
            metrics["nonfinite_consecutive"] = guard["consecutive"]
            metrics["nonfinite_total"] = guard["total"]
        state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            batch_stats=batch_stats,
        )
        labels = _hard_labels(batch["label"], logits)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return state, {"loss": loss, "accuracy": accuracy, **metrics}

    return train_step


def make_eval_step(*, apply_fn: Callable | None = None) -> Callable:
    """Returns ``eval_step(state, batch) -> sums`` over the rows where ``batch["mask"]`` is 1."""

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        fwd = apply_fn or state.apply_fn
        logits = fwd(state.variables(), batch["x"], train=False)
        loss = cross_entropy(logits, batch["label"])
        mask = batch.get("mask", jnp.ones(loss.shape, jnp.float32))
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss * mask),
            "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask),
        }

    return eval_step


def evaluate(
    state: TrainState,
    batches: Iterator[Batch],
    *,
    eval_step: Callable | None = None,
) -> dict[str, float]:
    """Runs ``eval_step`` over ``batches``; returns ``test_loss`` and ``test_accuracy``.

    The default evaluation ignores the optimizer, so it runs on the state without one: models
    of the same shape share one compiled program whatever their optimizers (sweeps compile it
    once). A custom ``eval_step`` gets the full state.
    """
    if eval_step is None:
        step = _default_eval
        if isinstance(state, TrainState):
            state = state.replace(opt_state=(), tx=None)
    else:
        step = jax.jit(eval_step)
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        out = jax.device_get(step(state, batch))
        for k in totals:
            totals[k] += float(out[k])
    if totals["count"] == 0:
        raise ValueError("Evaluation saw no examples: the evaluation split is empty.")
    return {
        "test_loss": totals["loss_sum"] / totals["count"],
        "test_accuracy": totals["correct"] / totals["count"],
    }


_default_eval = jax.jit(make_eval_step())


def numpy_tree(tree: PyTree) -> PyTree:
    """Copies every leaf to host numpy (for exact comparisons and reports)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))
