"""Populations: K configurations of one model trained in one compiled step with ``jax.vmap``.

Members share the model, the optimizer family, the schedule's shape and the batches; they
differ in continuous hyperparameters (``learning_rate``, ``momentum``, ``weight_decay``,
``label_smoothing``) and in their ``seed`` (initial parameters and step keys). The
hyperparameters live in each member's optimizer state (``optax.inject_hyperparams``), so the
K states stack into one pytree with a leading member axis and one ``vmap``-ed step trains them
all: on small models that is one dispatch instead of K.

A member trained here follows the same arithmetic as the same configuration trained alone with
``optim.make(name, learning_rate=peak * shape)`` and ``train.make_train_step`` (the tests check
this to 1e-5 after 100 steps).

Example:
    >>> tx = population.optimizer("momentum", shape=optax.constant_schedule(1.0))
    >>> members = [{"learning_rate": 0.1, "seed": 0}, {"learning_rate": 0.03, "seed": 1}]
    >>> states = population.init(model, tx, x[:1], members)
    >>> step = jax.jit(population.make_step(), donate_argnums=0)
    >>> states, metrics = step(states, population.smoothing(members), batch, keys)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import optim, train

PyTree = Any
Member = Mapping[str, float]

HYPERPARAMETERS = ("learning_rate", "momentum", "weight_decay", "label_smoothing")
# The optimizer hyperparameters each family reads; the others would be silently ignored.
_TAKES = {
    "sgd": ("learning_rate",),
    "momentum": ("learning_rate", "momentum"),
    "nesterov": ("learning_rate", "momentum"),
    "adagrad": ("learning_rate",),
    "rmsprop": ("learning_rate",),
    "adam": ("learning_rate",),
    "adamw": ("learning_rate", "weight_decay"),
}
_DEFAULTS = {"learning_rate": 1e-2, "momentum": 0.9, "weight_decay": 1e-4, "label_smoothing": 0.0}


def takes(name: str) -> tuple[str, ...]:
    """The member keys optimizer ``name`` reads (with ``label_smoothing`` and ``seed``)."""
    if name not in _TAKES:
        raise ValueError(f"Unknown optimizer {name!r}; accepted: {', '.join(_TAKES)}.")
    return (*_TAKES[name], "label_smoothing", "seed")


def check_members(name: str, members: Sequence[Member]) -> None:
    """Raises ValueError for an empty population, an unknown key or one ``name`` ignores."""
    allowed = set(takes(name))
    if not members:
        raise ValueError("A population needs at least one member; got none.")
    for i, m in enumerate(members):
        bad = sorted(set(m) - allowed)
        if bad:
            raise ValueError(
                f"Population member {i} sets {bad}, which optimizer {name!r} does not take; "
                f"it accepts {sorted(allowed)} (weight_decay needs adamw, momentum needs momentum "
                "or nesterov)."
            )
        if not m.get("learning_rate", _DEFAULTS["learning_rate"]) > 0:
            raise ValueError(f"Population member {i}: learning_rate must be > 0, got {m}.")
        if not 0 <= m.get("momentum", 0.0) < 1 or not 0 <= m.get("label_smoothing", 0.0) < 1:
            raise ValueError(
                f"Population member {i}: momentum/label_smoothing outside [0, 1): {m}."
            )


def optimizer(
    name: str,
    *,
    shape: optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay: float = 0.9,
    weight_decay_mask: PyTree | None = None,
) -> optax.GradientTransformation:
    """The optimizer ``name`` with its per-member hyperparameters held in its state.

    Args:
      name: one of ``optim.OPTIMIZERS``.
      shape: the schedule's shape at peak 1 (e.g. ``optim.schedule("warmup_cosine",
        learning_rate=1.0, ...)``); a member's rate at step t is its ``learning_rate`` times
        ``shape(t)``.
      b1, b2, eps, decay, weight_decay_mask: the fixed settings shared by every member (as in
        ``optim.make``).

    Returns:
      a transformation whose state holds ``learning_rate`` (and ``momentum`` or
      ``weight_decay`` where ``name`` takes them); :func:`init` sets them per member.
    """
    takes = _TAKES.get(name)
    if takes is None:
        raise ValueError(f"Unknown optimizer {name!r}; accepted: {', '.join(_TAKES)}.")
    mask = weight_decay_mask if weight_decay_mask is not None else optim.decay_rules_mask(None)
    fixed = {"b1": b1, "b2": b2, "eps": eps, "decay": decay, "mask": mask}

    def inner(learning_rate, momentum=0.0, weight_decay=0.0):
        peak = lambda t: learning_rate * shape(t)  # noqa: E731
        return optim._OPTAX[name](
            peak, {**fixed, "momentum": momentum, "weight_decay": weight_decay}
        )

    return optax.inject_hyperparams(inner)(**{k: _DEFAULTS[k] for k in takes})


def init(model: Any, tx: optax.GradientTransformation, sample_x, members: Sequence[Member]):
    """The members' `train.TrainState`s stacked on a leading axis of size ``len(members)``.

    Member i starts from ``model.init(PRNGKey(seed_i))`` and holds its own hyperparameters in
    its optimizer state; keys it does not set take the defaults (``learning_rate`` 0.01,
    ``momentum`` 0.9, ``weight_decay`` 1e-4).
    """
    states = []
    for m in members:
        params, batch_stats = train.init_model(
            model, jax.random.PRNGKey(int(m.get("seed", 0))), sample_x
        )
        state = train.TrainState.create(
            apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats
        )
        hyper = optax.tree_utils.tree_get(state.opt_state, "hyperparams")
        values = {k: jnp.asarray(m.get(k, _DEFAULTS[k]), v.dtype) for k, v in hyper.items()}
        states.append(state.replace(opt_state=optax.tree_utils.tree_set(state.opt_state, **values)))
    return stack(states)


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks pytrees of one structure leaf by leaf on a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: PyTree, i: int) -> PyTree:
    """Member ``i`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


def smoothing(members: Sequence[Member]) -> jax.Array:
    """The members' label smoothing as a (K,) array (the step's second argument)."""
    return jnp.asarray([float(m.get("label_smoothing", 0.0)) for m in members], jnp.float32)


def keys(members: Sequence[Member], step: int) -> jax.Array:
    """(K, 2) step keys: member i's is ``fold_in(PRNGKey(seed_i + 1), step)``."""
    return jnp.stack(
        [jax.random.fold_in(jax.random.PRNGKey(int(m.get("seed", 0)) + 1), step) for m in members]
    )


def _smoothed_loss(logits: jax.Array, batch: dict):
    # train.cross_entropy's formula with a traced smoothing (0 gives the unsmoothed loss exactly).
    ls = batch["label_smoothing"]
    targets = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=logits.dtype)
    targets = targets * (1.0 - ls) + ls / logits.shape[-1]
    value = optax.softmax_cross_entropy(logits, targets).mean()
    return value, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def make_step(*, augment: Callable | None = None) -> Callable:
    """``step(states, smoothing, batch, keys) -> (states, metrics)`` over the whole population.

    ``states`` from :func:`init`, ``smoothing`` a (K,) array (:func:`smoothing`), ``batch``
    shared by every member, ``keys`` (K, 2). Metrics have a leading (K,) axis. The step is
    ``train.make_train_step``'s, vmapped; jit it with the states donated.
    """
    single = train.make_train_step(_smoothed_loss, augment=augment)

    def one(state, ls, batch, key):
        return single(state, {**batch, "label_smoothing": ls}, key)

    return jax.vmap(one, in_axes=(0, 0, None, 0))


def make_eval(apply_fn: Callable) -> Callable:
    """``eval(params_and_stats, x, label) -> (K,) correct counts``, vmapped over members."""

    def correct(variables, x, label):
        logits = apply_fn(variables, x, train=False)
        return jnp.sum(jnp.argmax(logits, -1) == label)

    return jax.jit(jax.vmap(correct, in_axes=(0, None, None)))


def accuracy(eval_fn: Callable, states: PyTree, x: np.ndarray, label: np.ndarray, *, batch: int):
    """Each member's accuracy on ``(x, label)`` as a (K,) numpy array."""
    variables = jax.vmap(lambda s: s.variables())(states)
    total = np.zeros(jax.tree.leaves(states.step)[0].shape, np.int64)
    for i in range(0, len(label), batch):
        total += np.asarray(eval_fn(variables, x[i : i + batch], label[i : i + batch]))
    return total / len(label)
