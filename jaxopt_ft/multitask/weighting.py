"""Loss weightings: pure functions over a dict of task losses (and per-task gradient norms).

Every function takes ``{task: scalar loss}`` (plus its own state) and returns ``{task: weight}``
or the weighted total; the training step combines ``sum_t w_t * L_t``. Weights of 1 for every
task is the equal-weight baseline, so weights are on the scale where they sum to T.

- `equal_weights`: ``w_t = 1``.
- `static_weights`: fixed user weights (validated against the task names).
- `uncertainty_loss` (Kendall et al. 2018): learned log-variances ``s_t = log sigma_t^2``.
- `dwa_weights` (Liu et al. 2019): ``w = T * softmax(r / temperature)`` with ``r`` the ratio of
  the last two windows' mean losses.
- `gradnorm_update` (Chen et al. 2018): a gradient step on ``sum_t |G_t - target_t|`` over the
  weights, then renormalisation to ``sum_t w_t = T``.

PCGrad works on gradients rather than losses and lives in `jaxopt_ft.multitask.gradients`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

Losses = Mapping[str, jax.typing.ArrayLike]

# Kendall et al.'s factor in front of exp(-s) L: 1/(2 sigma^2) for a Gaussian likelihood
# (regression, their eq. 7), 1/sigma^2 for a tempered softmax (classification, eq. 10).
UNCERTAINTY_FACTOR = {"regression": 0.5, "classification": 1.0}
GRADNORM_MIN_WEIGHT = 1e-3


def _names(losses: Losses) -> tuple[str, ...]:
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError(f"losses must be a non-empty dict task -> loss, got {losses!r}.")
    return tuple(losses)


def _stack(values: Mapping[str, jax.typing.ArrayLike], names: Sequence[str]) -> jax.Array:
    return jnp.stack([jnp.asarray(values[n], jnp.float32) for n in names])


def _as_dict(vector: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
    return {n: vector[i] for i, n in enumerate(names)}


def check_task_keys(what: str, given: Mapping, names: Sequence[str]) -> None:
    """Raises ValueError unless ``given`` has exactly one entry per task in ``names``."""
    unknown = [k for k in given if k not in names]
    missing = [n for n in names if n not in given]
    if unknown or missing:
        raise ValueError(
            f"{what} must give one value per task. Tasks: {list(names)}; unknown task(s): "
            f"{unknown}; missing: {missing}. Fix the keys of {what}."
        )


def equal_weights(losses: Losses) -> dict[str, jax.Array]:
    """``w_t = 1`` for every task: the total loss is the plain sum."""
    return {n: jnp.ones((), jnp.float32) for n in _names(losses)}


def static_weights(losses: Losses, weights: Mapping[str, float]) -> dict[str, jax.Array]:
    """Fixed weights, one per task.

    Raises:
        ValueError: for weights of an unknown task, a task without a weight, or a negative or
            non-finite weight.
    """
    names = _names(losses)
    check_task_keys("static weights", weights, names)
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < float("inf"):
            raise ValueError(f"Static weight of task {name!r} must be a number >= 0, got {w!r}.")
    return {n: jnp.asarray(weights[n], jnp.float32) for n in names}


def uncertainty_loss(
    losses: Losses, log_vars: Mapping[str, jax.typing.ArrayLike], *, kinds: Mapping[str, str]
) -> jax.Array:
    """Kendall et al.'s homoscedastic-uncertainty total loss, with ``s_t = log sigma_t^2``.

    ``L = sum_t c_t * exp(-s_t) * L_t + s_t / 2`` with ``c_t = 1/2`` for regression tasks
    (Gaussian likelihood: ``L_t / (2 sigma^2) + log sigma``) and ``c_t = 1`` for classification
    (tempered softmax: ``L_t / sigma^2 + log sigma``). Its minimum over ``s_t`` is at
    ``s_t = log(2 c_t L_t)``. Differentiate it with respect to the log-variances (trainable
    params) and the model together.

    Args:
        losses: ``{task: scalar loss}``.
        log_vars: ``{task: scalar s_t}``, one per task.
        kinds: ``{task: "classification" | "regression"}``.

    Raises:
        ValueError: when log_vars or kinds do not match the tasks, or a kind is unknown.
    """
    names = _names(losses)
    check_task_keys("log_vars", log_vars, names)
    check_task_keys("kinds", kinds, names)
    total = jnp.zeros((), jnp.float32)
    for n in names:
        if kinds[n] not in UNCERTAINTY_FACTOR:
            raise ValueError(
                f"Task {n!r} has kind {kinds[n]!r}; accepted: {', '.join(UNCERTAINTY_FACTOR)}."
            )
        s = jnp.asarray(log_vars[n], jnp.float32)
        total = total + UNCERTAINTY_FACTOR[kinds[n]] * jnp.exp(-s) * losses[n] + 0.5 * s
    return total


def dwa_weights(last: Losses, previous: Losses, *, temperature: float) -> dict[str, jax.Array]:
    """Dynamic Weight Average: ``w_t = T exp(r_t / temperature) / sum_i exp(r_i / temperature)``.

    Args:
        last: each task's mean loss over the last finished window (epoch).
        previous: the same over the window before it.
        temperature: softness; large values give equal weights.

    Returns:
        ``{task: weight}``, summing to T. A task whose loss fell more slowly gets more weight.
    """
    names = _names(last)
    check_task_keys("previous losses", previous, names)
    if not temperature > 0:
        raise ValueError(f"DWA temperature must be > 0, got {temperature!r}.")
    ratio = _stack(last, names) / _stack(previous, names)
    return _as_dict(len(names) * jax.nn.softmax(ratio / temperature), names)


class DwaState(NamedTuple):
    """Running window sums for DWA: ``total``/``count`` of the current window, the means of the
    last two finished windows, and how many windows have finished."""

    total: jax.Array
    count: jax.Array
    last: jax.Array
    previous: jax.Array
    windows: jax.Array


def dwa_init(num_tasks: int) -> DwaState:
    zeros = lambda: jnp.zeros((num_tasks,), jnp.float32)  # noqa: E731 (distinct buffers)
    return DwaState(zeros(), jnp.zeros((), jnp.int32), zeros(), zeros(), jnp.zeros((), jnp.int32))


def dwa_current(state: DwaState, *, temperature: float) -> jax.Array:
    """The (T,) weights for the next step: ones until two windows have finished."""
    num_tasks = state.last.shape[0]
    safe_prev = jnp.where(state.previous > 0, state.previous, 1.0)
    w = num_tasks * jax.nn.softmax(state.last / safe_prev / temperature)
    return jnp.where(state.windows >= 2, w, jnp.ones_like(w))


def dwa_update(state: DwaState, losses: jax.Array, *, window: int) -> DwaState:
    """Adds one step's (T,) task losses; closes the window after ``window`` steps."""
    total = state.total + jax.lax.stop_gradient(losses)
    count = state.count + 1
    done = count >= window
    mean = total / count
    return DwaState(
        total=jnp.where(done, 0.0, total),
        count=jnp.where(done, 0, count),
        last=jnp.where(done, mean, state.last),
        previous=jnp.where(done, state.last, state.previous),
        windows=state.windows + done.astype(jnp.int32),
    )


def gradnorm_update(
    weights: Losses,
    *,
    losses: Losses,
    initial_losses: Losses,
    grad_norms: Losses,
    alpha: float,
    learning_rate: float,
) -> dict[str, jax.Array]:
    """One GradNorm step on the task weights, renormalised so that they sum to T.

    With ``G_t = w_t * ||grad_W L_t||`` on the last shared layer ``W``, the relative inverse
    training rate ``r_t = (L_t / L_t(0)) / mean_i(L_i / L_i(0))`` and the target
    ``mean_i(G_i) * r_t ** alpha`` held constant, the weights take one gradient step of size
    ``learning_rate`` on ``sum_t |G_t - target_t|``, are floored at 1e-3 and rescaled to sum to
    T.

    Args:
        weights: current ``{task: w_t}``.
        losses: this step's ``{task: L_t}``.
        initial_losses: ``{task: L_t(0)}`` from the first step.
        grad_norms: ``{task: ||grad_W L_t||}`` of the unweighted losses.
        alpha: restoring force; 0 equalises gradient norms, larger values push lagging tasks.
        learning_rate: step size of the weight update.

    Returns:
        The new ``{task: w_t}``.
    """
    names = _names(weights)
    for what, d in (("losses", losses), ("initial_losses", initial_losses)):
        check_task_keys(what, d, names)
    check_task_keys("grad_norms", grad_norms, names)
    w = _stack(weights, names)
    new = gradnorm_step(
        w,
        losses=_stack(losses, names),
        initial=_stack(initial_losses, names),
        norms=_stack(grad_norms, names),
        alpha=alpha,
        learning_rate=learning_rate,
    )
    return _as_dict(new, names)


def gradnorm_step(
    w: jax.Array,
    *,
    losses: jax.Array,
    initial: jax.Array,
    norms: jax.Array,
    alpha: float,
    learning_rate: float,
) -> jax.Array:
    """`gradnorm_update` on (T,) arrays (the form the train step uses)."""
    inverse_rate = losses / jnp.where(initial > 0, initial, 1.0)
    relative = inverse_rate / jnp.mean(inverse_rate)
    target = jax.lax.stop_gradient(jnp.mean(w * norms) * relative**alpha)

    def objective(w):
        return jnp.sum(jnp.abs(w * norms - target))

    w = w - learning_rate * jax.grad(objective)(w)
    w = jnp.maximum(w, GRADNORM_MIN_WEIGHT)
    return w * (w.shape[0] / jnp.sum(w))


class GradNormState(NamedTuple):
    """GradNorm's (T,) task weights and the first step's task losses."""

    weights: jax.Array
    initial: jax.Array


def gradnorm_init(num_tasks: int) -> GradNormState:
    return GradNormState(jnp.ones((num_tasks,), jnp.float32), jnp.ones((num_tasks,), jnp.float32))
