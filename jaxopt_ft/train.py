"""Training state, the one train-step builder, and evaluation; the loop is `jaxopt_ft.loop.fit`.

A step is a pure function ``train_step(state, batch, key) -> (state, metrics)``; `fit` jits it
with the state donated (or runs it data-parallel) and drives it from Python. Every kind of
training in the library is one call of :func:`make_train_step`:

- plain classification: ``make_train_step()`` (cross-entropy, accuracy);
- partial fine-tuning, linear probe, LoRA: ``make_train_step(trainable=mask)``: only the leaves
  where the bool ``mask`` is True are differentiated, the others are constants of the loss and
  leave the step bit-identical;
- quantization-aware training: ``make_train_step(apply_fn=fake_quant_apply)``;
- multi-task learning: ``make_train_step(task_losses, combine=weighting)``: the loss returns a
  vector of task losses and ``combine`` turns it into one gradient (loss weights, PCGrad, ...).

The builder does the forward pass, BatchNorm state, the gradient average over devices under
``pmap`` (``axis_name``), the optimizer update, the non-finite guard's bookkeeping and the
metrics, once for all of them. Whatever changes how parameters move (pruning masks, frozen
groups, accumulation) lives in the optax transformation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxopt_ft import optim
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.parallel import all_mean

PyTree = Any
Batch = dict[str, Any]
StepFn = Callable[..., tuple[Any, dict[str, jax.Array]]]
Loss = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer state, model state and method state of one model.

    Attributes:
      step: the number of steps taken.
      params: the trainable parameters (every leaf, frozen ones included).
      opt_state: the optimizer's state.
      batch_stats: BatchNorm statistics, ``{}`` for models without BatchNorm.
      aux: state of a gradient combiner (e.g. a multi-task weighting), ``()`` when none.
      apply_fn: the model's ``apply`` (static).
      tx: the optimizer (static).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    batch_stats: PyTree
    aux: PyTree
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Callable,
        params: PyTree,
        tx: optax.GradientTransformation,
        batch_stats: PyTree | None = None,
        aux: PyTree = (),
    ) -> TrainState:
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            batch_stats={} if batch_stats is None else batch_stats,
            aux=aux,
            apply_fn=apply_fn,
            tx=tx,
        )

    def variables(self, params: PyTree | None = None) -> dict[str, PyTree]:
        """The ``variables`` dict for ``apply_fn`` (``params`` overrides the state's)."""
        return variables_of(self.params if params is None else params, self.batch_stats)

    def tree(self) -> dict[str, PyTree]:
        """The array part of the state, as saved in checkpoints."""
        return {
            "step": self.step,
            "params": self.params,
            "opt_state": self.opt_state,
            "batch_stats": self.batch_stats,
            "aux": self.aux,
        }

    def replace_tree(self, tree: dict[str, PyTree]) -> TrainState:
        return self.replace(**tree)


def variables_of(params: PyTree, batch_stats: PyTree | None = None) -> dict[str, PyTree]:
    """``{"params": ...}`` plus ``batch_stats`` when the model has any."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def init_model(model: Any, key: jax.Array, sample_x: jax.typing.ArrayLike) -> tuple:
    """Initialises a linen ``model`` on ``sample_x``; returns ``(params, batch_stats)``."""
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


def classification_loss(*, label_smoothing: float = 0.0) -> Loss:
    """``(logits, batch) -> (mean cross-entropy, {"accuracy"})`` for ``batch["label"]``."""

    def loss(logits: jax.Array, batch: Batch):
        labels = batch["label"]
        value = cross_entropy(logits, labels, label_smoothing=label_smoothing).mean()
        hard = jnp.argmax(labels, -1) if labels.ndim == logits.ndim else labels
        return value, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == hard)}

    return loss


class Combined(NamedTuple):
    """What a gradient combiner returns to the step.

    Attributes:
      loss: the scalar objective that was minimised (logged as ``loss``).
      grads: the gradient with the structure of the differentiated params, averaged over
        devices when the step runs under ``pmap``.
      metrics: further scalar metrics (e.g. per-task losses and weights).
      model_state: the forward pass's new BatchNorm statistics.
      aux: the combiner's new state (``state.aux``).
      tx_args: extra keyword arguments for ``tx.update`` (e.g. the task an alternating
        optimizer steps).
    """

    loss: jax.Array
    grads: PyTree
    metrics: dict[str, jax.Array]
    model_state: PyTree
    aux: PyTree
    tx_args: dict[str, Any]


Objective = Callable[[PyTree], tuple[jax.Array, tuple[dict, PyTree]]]
Combine = Callable[..., Combined]


def mean_gradient(
    objective: Objective,
    params: PyTree,
    *,
    aux: PyTree,
    key: jax.Array,
    step: jax.Array,
    reduce: Callable[[PyTree], PyTree],
) -> Combined:
    """The plain combiner: the gradient of a scalar loss, averaged over devices.

    Every combiner has this signature.

    Args:
      objective: ``params -> (loss, (metrics, model_state))``; the loss is a scalar here, the
        vector of task losses for a multi-task combiner.
      params: the differentiated parameters.
      aux: ``state.aux``, passed through here.
      key: the step's key, the same on every device (PCGrad draws its task order from it).
      step: ``state.step`` (round-robin task choice, periodic measurements).
      reduce: the mean over devices (the identity outside ``pmap``); apply it to gradients and
        to anything computed from per-device losses before it steers the update.
    """
    del key, step
    (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return Combined(loss, reduce(grads), metrics, model_state, aux, {})


def _partition(params: PyTree, mask: PyTree | None) -> tuple[Any, dict | None]:
    """``(differentiated, constant)``: flat dicts split by ``mask``, or ``(params, None)``."""
    if mask is None:
        return params, None
    keep = tree_lib.flatten(mask)
    flat = tree_lib.flatten(params)
    return (
        {p: v for p, v in flat.items() if keep[p]},
        {p: v for p, v in flat.items() if not keep[p]},
    )


def _merge(like: PyTree, part: Any, constant: dict | None) -> PyTree:
    return part if constant is None else tree_lib.unflatten_like(like, {**part, **constant})


def _frozen_bn_owners(mask: PyTree | None, batch_stats: PyTree) -> set[str]:
    """Module paths owning ``batch_stats`` whose parameters ``mask`` leaves all constant."""
    owners = {p.rsplit("/", 1)[0] for p in tree_lib.paths(batch_stats)}
    if mask is None or not owners:
        return set()
    flat = tree_lib.flatten(mask)
    frozen = set()
    for owner in owners:
        own = [keep for path, keep in flat.items() if path.rsplit("/", 1)[0] == owner]
        if own and not any(own):
            frozen.add(owner)
    return frozen


def _train_mode(mask: PyTree | None, batch_stats: PyTree, train_mode: bool | None) -> bool:
    """The model's ``train`` flag: False when every BatchNorm layer is frozen (if not given)."""
    if train_mode is not None:
        return train_mode
    owners = {p.rsplit("/", 1)[0] for p in tree_lib.paths(batch_stats)}
    return not owners or _frozen_bn_owners(mask, batch_stats) != owners


def _keep_frozen_stats(mask: PyTree | None, old: PyTree, new: PyTree) -> PyTree:
    """Puts back the statistics of BatchNorm layers whose parameters are all frozen."""
    frozen = _frozen_bn_owners(mask, old)
    if not frozen:
        return new
    pick = lambda path, o, n: o if path.rsplit("/", 1)[0] in frozen else n  # noqa: E731
    return tree_lib.map_with_path(pick, old, new)


def make_train_step(
    loss: Loss | None = None,
    *,
    combine: Combine = mean_gradient,
    trainable: PyTree | None = None,
    augment: Callable[[jax.Array, Batch], Batch] | None = None,
    apply_fn: Callable | None = None,
    axis_name: str | None = None,
    train_mode: bool | None = None,
) -> StepFn:
    """Returns a pure ``train_step(state, batch, key) -> (state, metrics)``.

    Args:
      loss: ``(outputs, batch) -> (loss, metrics)`` on the model's outputs; default
        :func:`classification_loss` (cross-entropy on ``batch["label"]`` and accuracy). A
        multi-task loss returns the vector of task losses for its ``combine``.
      combine: turns the objective into a gradient (:func:`mean_gradient`, or a multi-task
        weighting); see :class:`Combined`.
      trainable: a bool pytree with the params' structure: only True leaves are
        differentiated; the others enter the loss as constants and leave the step unchanged
        (bit-identical, whatever the optimizer does). None differentiates every leaf.
      augment: optional ``(key, batch) -> batch`` applied on device inside the step.
      apply_fn: overrides ``state.apply_fn`` (e.g. a quantization-aware forward pass).
      axis_name: under ``pmap`` the device axis: gradients (inside ``combine``) and BatchNorm
        statistics are averaged over it, and its index is folded into the augmentation and
        dropout keys so each device draws for its own examples. The combiner's key stays the
        same on every device (replicas must agree on, e.g., PCGrad's task order).
      train_mode: the model's ``train`` flag. None: False when ``trainable`` freezes every
        BatchNorm layer (inference-mode statistics, left untouched), else True. Statistics of
        frozen BatchNorm layers never move.

    Metrics: ``loss``, the loss's own metrics (``accuracy`` by default), and with a guarded
    optimizer (``optim.make(..., skip_nonfinite=True)``) ``nonfinite_consecutive`` /
    ``nonfinite_total``, which ``fit(..., nan_policy="stop")`` reads.
    """
    loss = loss or classification_loss()

    def reduce(tree: PyTree) -> PyTree:
        return all_mean(tree, axis_name)

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        k_aug, k_drop, k_combine = jax.random.split(key, 3)
        if axis_name is not None:
            index = jax.lax.axis_index(axis_name)
            k_aug, k_drop = jax.random.fold_in(k_aug, index), jax.random.fold_in(k_drop, index)
        if augment is not None:
            batch = augment(k_aug, batch)
        fwd = apply_fn or state.apply_fn
        mode = _train_mode(trainable, state.batch_stats, train_mode)
        mutable = ["batch_stats"] if (state.batch_stats and mode) else False
        part, constant = _partition(state.params, trainable)

        def objective(part):
            params = _merge(state.params, part, constant)
            out = fwd(
                state.variables(params),
                batch["x"],
                train=mode,
                rngs={"dropout": k_drop},
                mutable=mutable,
            )
            outputs, new_vars = out if mutable else (out, {})
            value, metrics = loss(outputs, batch)
            return value, (metrics, new_vars.get("batch_stats", state.batch_stats))

        c = combine(objective, part, aux=state.aux, key=k_combine, step=state.step, reduce=reduce)
        return _apply(state, c, part, constant, trainable=trainable, mutable=mutable, reduce=reduce)

    return train_step


def _apply(state: TrainState, c: Combined, part, constant, *, trainable, mutable, reduce):
    """The optimizer update, BatchNorm statistics and metrics of one step from its gradient."""
    if constant is None:
        grads = c.grads
    else:  # multi_transform wants the whole tree; set_to_zero never reads these zeros
        grads = _merge(state.params, c.grads, jax.tree.map(jnp.zeros_like, constant))
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **c.tx_args)
    new_part = optax.apply_updates(part, _partition(updates, trainable)[0])
    batch_stats = state.batch_stats
    if mutable:
        batch_stats = _keep_frozen_stats(trainable, batch_stats, reduce(c.model_state))
    metrics = {"loss": c.loss, **c.metrics}
    guard = optim.nonfinite_counts(opt_state)
    if guard is not None:
        # A skipped update must not leave NaN running statistics behind either.
        batch_stats = jax.tree.map(
            lambda new, old: jnp.where(guard["applied"], new, old), batch_stats, state.batch_stats
        )
        metrics["nonfinite_consecutive"] = guard["consecutive"]
        metrics["nonfinite_total"] = guard["total"]
    state = state.replace(
        step=state.step + 1,
        params=_merge(state.params, new_part, constant),
        opt_state=opt_state,
        batch_stats=batch_stats,
        aux=c.aux,
    )
    return state, metrics


def _eval_sums(apply_fn: Callable, variables: PyTree, batch: Batch) -> dict[str, jax.Array]:
    logits = apply_fn(variables, batch["x"], train=False)
    loss = cross_entropy(logits, batch["label"])
    mask = batch.get("mask", jnp.ones(loss.shape, jnp.float32))
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }


# apply_fn is static: models of the same structure share one compiled program.
_eval_step = jax.jit(_eval_sums, static_argnums=0)


def evaluate(
    apply_fn: Callable, variables: Mapping[str, PyTree], batches: Iterable[Batch]
) -> dict[str, float]:
    """Test loss and accuracy of ``apply_fn(variables, x, train=False)`` over ``batches``.

    Args:
      apply_fn: the model's ``apply`` (or any function with its signature), hashable.
      variables: ``{"params": ..., "batch_stats": ...}`` (:func:`variables_of`).
      batches: batches with ``x``, ``label`` and optionally a 0/1 ``mask`` of padding rows.

    Returns:
      ``{"test_loss", "test_accuracy"}`` over the rows whose mask is 1.

    Raises:
      ValueError: the batches hold no example.
    """
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        out = jax.device_get(_eval_step(apply_fn, variables, batch))
        for k in totals:
            totals[k] += float(out[k])
    if totals["count"] == 0:
        raise ValueError("Evaluation saw no examples: the evaluation split is empty.")
    return {
        "test_loss": totals["loss_sum"] / totals["count"],
        "test_accuracy": totals["correct"] / totals["count"],
    }


def numpy_tree(tree: PyTree) -> PyTree:
    """Copies every leaf to host numpy (for exact comparisons and reports)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))
