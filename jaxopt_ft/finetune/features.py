"""Transferred features: run the frozen trunk once, then train only the head on the cache.

With the trunk frozen, every epoch of a linear probe recomputes the same features. Here the
trunk runs once (:func:`extract`, ``features_only=True``), and the head trains on the cached
``(N, F)`` matrix. A tiny head is dominated by per-step overhead (dispatch, host batching), so
:func:`head_trainer` compiles *all* head steps into one call: a ``lax.scan`` over steps, each on
the whole cache or on minibatches gathered on device from per-epoch permutations. For an exact
alternative, :func:`ridge_head` solves least squares on one-hot targets in closed form (as
big_vision's few-shot evaluator does).

Heads are ``{"kernel": (F, C), "bias": (C,)}``, the params of the models' ``head`` Dense.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import train

PyTree = Any
Head = dict[str, jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def _features(apply_fn: Callable, variables: PyTree, x: jax.Array) -> jax.Array:
    # Module-level and keyed on apply_fn, so repeated extractions reuse one compilation.
    return apply_fn(variables, x, train=False, features_only=True)


def extract(
    apply_fn: Callable,
    variables: PyTree,
    x: jax.typing.ArrayLike,
    *,
    batch_size: int = 1000,
) -> jax.Array:
    """Returns the trunk's features ``(N, F)`` for every row of ``x``.

    Runs ``apply_fn(variables, xb, train=False, features_only=True)`` over fixed-size batches
    (the last one padded), so it compiles once.

    Args:
      apply_fn: ``model.apply``.
      variables: ``{"params": ..., "batch_stats": ...}`` of the (frozen) model.
      x: inputs, ``(N, ...)``.
      batch_size: rows per forward pass.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    x = np.asarray(x)
    n = len(x)
    if n == 0:
        raise ValueError("extract got no examples; pass a non-empty x.")
    size = min(batch_size, n)
    out = []
    for start in range(0, n, size):
        xb = x[start : start + size]
        real = len(xb)
        if real < size:
            xb = np.concatenate([xb, np.zeros((size - real, *xb.shape[1:]), xb.dtype)])
        out.append(_features(apply_fn, variables, xb)[:real])
    return jnp.concatenate(out) if len(out) > 1 else out[0]


def head_logits(head: Head, features: jax.Array) -> jax.Array:
    return features @ head["kernel"] + head["bias"]


def init_head(num_features: int, num_classes: int, dtype: Any = jnp.float32) -> Head:
    """A zero head: the cross-entropy of a linear head is convex, so zero is a fine start."""
    return {
        "kernel": jnp.zeros((num_features, num_classes), dtype),
        "bias": jnp.zeros((num_classes,), dtype),
    }


def head_trainer(
    tx: optax.GradientTransformation,
    *,
    steps: int,
    num_examples: int,
    batch_size: int | None = None,
    label_smoothing: float = 0.0,
) -> Callable:
    """Compiles ``steps`` head steps into one call.

    Args:
      tx: the head's optimizer.
      steps: gradient steps per call.
      num_examples: rows of the feature cache (static: it fixes the shapes).
      batch_size: rows per step; ``None`` uses the whole cache every step. Otherwise step ``i``
        takes rows ``[p * b, (p + 1) * b)`` of epoch ``i // (N // b)``'s permutation, drawn
        from ``fold_in(key, epoch)`` on device.
      label_smoothing: label smoothing of the cross-entropy.

    Returns:
      A jitted ``run(head, opt_state, features, labels, key) -> (head, opt_state, losses)``
      with ``losses`` of shape ``(steps,)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    if batch_size is not None and not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_size={batch_size!r} must be in [1, {num_examples}] (the cache's rows), "
            "or None for whole-cache steps."
        )
    per_epoch = num_examples // batch_size if batch_size else 1
    epochs = -(-steps // per_epoch)

    def loss_fn(head, x, y):
        logits = head_logits(head, x)
        return train.cross_entropy(logits, y, label_smoothing=label_smoothing).mean()

    def run(head, opt_state, features, labels, key):
        if batch_size is not None:
            perms = jax.vmap(
                lambda e: jax.random.permutation(jax.random.fold_in(key, e), num_examples)
            )(jnp.arange(epochs))

        def step(carry, i):
            h, s = carry
            if batch_size is None:
                x, y = features, labels
            else:
                epoch, pos = jnp.divmod(i, per_epoch)
                rows = jax.lax.dynamic_slice(perms[epoch], (pos * batch_size,), (batch_size,))
                x, y = features[rows], labels[rows]
            loss, grads = jax.value_and_grad(loss_fn)(h, x, y)
            updates, s = tx.update(grads, s, h)
            return (optax.apply_updates(h, updates), s), loss

        (head, opt_state), losses = jax.lax.scan(step, (head, opt_state), jnp.arange(steps))
        return head, opt_state, losses

    return jax.jit(run)


def fit_head(
    features: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    tx: optax.GradientTransformation,
    steps: int,
    key: jax.Array,
    head: Head | None = None,
    num_classes: int | None = None,
    batch_size: int | None = None,
) -> tuple[Head, PyTree, jax.Array]:
    """Trains a linear head on cached features in one compiled call.

    Args:
      features: ``(N, F)`` cached trunk features.
      labels: ``(N,)`` int classes.
      tx: the head's optimizer (e.g. AdamW).
      steps: gradient steps.
      key: PRNG key for the minibatch permutations.
      head: the initial head (default: zeros, which needs ``num_classes``).
      num_classes: classes of a zero head.
      batch_size: rows per step (``None``: the whole cache).

    Returns:
      ``(head, opt_state, losses)``.
    """
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if head is None:
        if num_classes is None:
            raise ValueError("fit_head needs head or num_classes; pass num_classes=C.")
        head = init_head(features.shape[1], num_classes, features.dtype)
    run = head_trainer(tx, steps=steps, num_examples=len(labels), batch_size=batch_size)
    return run(head, tx.init(head), features, labels, key)


def ridge_head(
    features: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, num_classes: int, l2: float
) -> Head:
    """Closed-form ridge regression onto one-hot targets (unpenalised bias).

    Solves ``min_W |Xc W - Yc|^2 + l2 |W|^2`` with centred features and targets, in the dual
    form (an ``N x N`` system) when there are fewer examples than features.

    Args:
      features: ``(N, F)`` cached features.
      labels: ``(N,)`` int classes.
      num_classes: number of classes ``C``.
      l2: ridge penalty, > 0.
    """
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2!r}.")
    x = jnp.asarray(features, jnp.float32)
    y = jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n, f = xc.shape
    if n < f:
        kernel = xc.T @ jnp.linalg.solve(xc @ xc.T + l2 * jnp.eye(n), yc)
    else:
        kernel = jnp.linalg.solve(xc.T @ xc + l2 * jnp.eye(f), xc.T @ yc)
    return {"kernel": kernel, "bias": y_mean - x_mean @ kernel}
