"""Optimizers and learning-rate schedules from plain arguments, all through optax.

`make` builds the optimizer, `schedule` the learning-rate schedule. Both take only plain
arguments (never a ConfigDict) and reject unknown names with the list of accepted ones.

Example:
    >>> lr = schedule("warmup_cosine", learning_rate=1e-2, steps=6000, warmup_steps=300)
    >>> tx = make("adam", learning_rate=lr)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = (
    "constant",
    "exponential",
    "inverse_time",
    "cosine",
    "warmup_cosine",
    "piecewise",
)

ScalarOrSchedule = float | optax.Schedule


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


def schedule(
    name: str,
    *,
    learning_rate: float,
    steps: int,
    warmup_steps: int = 0,
    decay_rate: float = 0.01,
    boundaries: Sequence[float] = (0.5, 0.75),
    scale: float = 0.1,
    end_value: float = 0.0,
) -> optax.Schedule:
    """Returns a learning-rate schedule over ``steps`` training steps.

    Args:
      name: one of :data:`SCHEDULES`.
        ``constant``: ``learning_rate`` throughout.
        ``exponential``: ``learning_rate * decay_rate ** (t / steps)`` (ends at
        ``decay_rate * learning_rate``).
        ``inverse_time``: ``learning_rate / (1 + (1 / decay_rate - 1) * t / steps)`` (also
        ends at ``decay_rate * learning_rate``, but decays fast early and slowly late).
        ``cosine``: cosine decay from ``learning_rate`` to ``end_value``.
        ``warmup_cosine``: linear warm-up from 0 over ``warmup_steps``, then cosine decay.
        ``piecewise``: multiplied by ``scale`` at each boundary (fractions of ``steps``).
      learning_rate: peak learning rate, > 0.
      steps: total training steps, >= 1.
      warmup_steps: warm-up length for ``warmup_cosine``.
      decay_rate: final / initial learning rate for ``exponential`` and ``inverse_time``.
      boundaries: fractions of ``steps`` at which ``piecewise`` scales the rate.
      scale: factor applied at each ``piecewise`` boundary.
      end_value: final learning rate of the cosine schedules.

    Raises:
      ValueError: unknown name or out-of-range value.
    """
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; accepted: {', '.join(SCHEDULES)}.")
    _check_positive("learning_rate", learning_rate)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}.")
    steps = int(steps)
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name in ("exponential", "inverse_time"):
        if not 0 < decay_rate <= 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate!r}.")
        if name == "exponential":
            return optax.exponential_decay(learning_rate, steps, decay_rate)
        rate = 1.0 / decay_rate - 1.0
        return lambda t: learning_rate / (1.0 + rate * jnp.asarray(t, jnp.float32) / steps)
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, steps, alpha=end_value / learning_rate)
    if name == "warmup_cosine":
        if not 0 <= warmup_steps < steps:
            raise ValueError(
                f"warmup_steps must be in [0, steps={steps}), got {warmup_steps!r}; "
                "lower it or train longer."
            )
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, steps, end_value=end_value
        )
    # piecewise
    bounds = {}
    for b in boundaries:
        if not 0 < b < 1:
            raise ValueError(f"piecewise boundaries are fractions in (0, 1), got {b!r}.")
        bounds[max(1, int(round(b * steps)))] = scale
    _check_positive("scale", scale)
    return optax.piecewise_constant_schedule(learning_rate, bounds)


def make(
    name: str,
    *,
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    decay: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_mask: optax.Params | None = None,
) -> optax.GradientTransformation:
    """Returns the optimizer ``name`` from optax.

    Args:
      name: one of :data:`OPTIMIZERS`.
      learning_rate: a float or an optax schedule.
      momentum: momentum for ``momentum`` and ``nesterov`` (``sgd`` has none).
      b1: first-moment decay of ``adam``/``adamw``.
      b2: second-moment decay of ``adam``/``adamw``.
      eps: numerical stability term of the adaptive methods.
      decay: squared-gradient decay of ``rmsprop``.
      weight_decay: decoupled weight decay of ``adamw``.
      weight_decay_mask: bool pytree (or callable) selecting the leaves ``adamw`` decays.

    Raises:
      ValueError: unknown name or out-of-range value.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}.")
    if not callable(learning_rate):
        _check_positive("learning_rate", learning_rate)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
    for nm, v in (("b1", b1), ("b2", b2), ("decay", decay)):
        if not 0 <= v < 1:
            raise ValueError(f"{nm} must be in [0, 1), got {v!r}.")
    _check_positive("eps", eps)
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=momentum)
    if name == "nesterov":
        return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
    if name == "adagrad":
        return optax.adagrad(learning_rate, eps=eps)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate, decay=decay, eps=eps)
    if name == "adam":
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    return optax.adamw(
        learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
    )
