"""Sparsity schedules (one-shot, gradual polynomial, constant and cosine for dynamic sparse
training) and lottery-ticket rounds with rewinding.

A :class:`SparsitySchedule` says, for an update step ``t``, what the target sparsity is,
whether masks are recomputed at ``t`` and, for dynamic sparse training (SET, RigL), which
fraction of each layer's active weights is dropped and regrown there. Its functions are
jnp-traceable so :func:`prune.wrap` can evaluate them on its step counter inside ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft.prune import allocate
from jaxopt_ft.prune import masks as masks_lib

PyTree = Any
Step = int | jax.Array


class SparsitySchedule(NamedTuple):
    """Target sparsity per step and the steps at which masks are recomputed.

    Attributes:
      sparsity: ``step -> float32 scalar`` target sparsity.
      is_update_step: ``step -> bool scalar``: recompute masks at this step.
      final_sparsity: the sparsity reached once the schedule is done (a Python float).
      update_fraction: ``step -> float32 scalar`` fraction of each layer's active weights
        that dynamic sparse training drops and regrows at an update step; None for schedules
        that only prune.
    """

    sparsity: Callable[[Step], jax.Array]
    is_update_step: Callable[[Step], jax.Array]
    final_sparsity: float
    update_fraction: Callable[[Step], jax.Array] | None = None


def _check_step(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name}={value!r} is invalid: expected an integer >= {minimum}. "
            f"Fix: pass {name} as a step count."
        )
    return value


def update_steps(
    *, begin_step: int, end_step: int | None, frequency: int = 1
) -> Callable[[Step], jax.Array]:
    """``step -> bool``: True at ``begin_step + i * frequency`` up to ``end_step``, and at
    ``end_step`` itself; only at ``begin_step`` when ``end_step`` is None.

    Raises:
      ValueError: negative steps, ``frequency < 1`` or ``end_step < begin_step``.
    """
    _check_step("begin_step", begin_step, 0)
    _check_step("frequency", frequency, 1)
    if end_step is None:
        return lambda step: jnp.asarray(step) == begin_step
    _check_step("end_step", end_step, begin_step)

    def is_update(step: Step) -> jax.Array:
        step = jnp.asarray(step)
        on_grid = (step - begin_step) % frequency == 0
        inside = (step >= begin_step) & (step <= end_step)
        return inside & (on_grid | (step == end_step))

    return is_update


def one_shot(sparsity: float, *, step: int = 0) -> SparsitySchedule:
    """Prune once, at update step ``step``, to ``sparsity``; masks are fixed afterwards.

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)`` or a negative step.
    """
    s = allocate.check_sparsity(sparsity)
    return SparsitySchedule(
        sparsity=lambda t: jnp.full((), s, jnp.float32),
        is_update_step=update_steps(begin_step=step, end_step=None),
        final_sparsity=s,
    )


def polynomial(
    *,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    power: int = 3,
) -> SparsitySchedule:
    """Gradual pruning of Zhu & Gupta (2017).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` for ``t0 <= t <= t0 + n*dt``
    with ``t0 = begin_step``, ``n * dt = end_step - begin_step`` and ``dt = frequency``;
    ``s_i`` before ``begin_step`` and ``s_f`` after ``end_step``. Masks are recomputed every
    ``frequency`` steps from ``begin_step``, and at ``end_step`` so ``s_f`` is always reached.

    Raises:
      ValueError: a sparsity outside ``[0, 1)`` or inconsistent steps.
    """
    s_f = allocate.check_sparsity(final_sparsity, what="final_sparsity")
    s_i = allocate.check_sparsity(initial_sparsity, what="initial_sparsity")
    is_update = update_steps(begin_step=begin_step, end_step=end_step, frequency=frequency)
    span = max(end_step - begin_step, 1)

    def sparsity(step: Step) -> jax.Array:
        t = jnp.clip(jnp.asarray(step, jnp.float32), begin_step, end_step)
        frac = 1.0 - (t - begin_step) / span
        return jnp.asarray(s_f + (s_i - s_f) * frac**power, jnp.float32)

    return SparsitySchedule(sparsity=sparsity, is_update_step=is_update, final_sparsity=s_f)


def check_fraction(fraction: Any) -> float:
    """Validates an update fraction in the open interval ``(0, 1)``.

    Raises:
      ValueError: ``fraction`` is not a number in ``(0, 1)``.
    """
    ok = isinstance(fraction, int | float | np.floating) and not isinstance(fraction, bool)
    if not ok or not 0.0 < float(fraction) < 1.0:
        raise ValueError(
            f"update fraction={fraction!r} must be a number in (0, 1): the share of each "
            "layer's active weights dropped and regrown per update. Fix: pass e.g. 0.3."
        )
    return float(fraction)


def constant(
    sparsity: float,
    *,
    frequency: int = 1,
    begin_step: int = 0,
    end_step: int | None = None,
    fraction: float | None = None,
) -> SparsitySchedule:
    """A fixed sparsity, masks recomputed every ``frequency`` steps in ``[begin, end]``.

    With ``end_step=None`` masks are computed once, at ``begin_step`` (static sparsity,
    N:M). With ``fraction`` (SET, Mocanu et al. 2018: a constant share zeta of the weights is
    replaced at every update) dynamic sparse training maskers drop and regrow ``fraction`` of
    each layer's active weights at every update step.

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, a fraction outside ``(0, 1)``,
        ``frequency < 1`` or inconsistent steps.
    """
    s = allocate.check_sparsity(sparsity)
    f = None if fraction is None else check_fraction(fraction)
    is_update = update_steps(begin_step=begin_step, end_step=end_step, frequency=frequency)
    return SparsitySchedule(
        sparsity=lambda t: jnp.full((), s, jnp.float32),
        is_update_step=is_update,
        final_sparsity=s,
        update_fraction=None if f is None else (lambda t: jnp.full((), f, jnp.float32)),
    )


def cosine(
    sparsity: float,
    *,
    fraction: float,
    frequency: int,
    end_step: int,
    begin_step: int = 0,
) -> SparsitySchedule:
    """RigL's schedule (Evci et al. 2020, "Rigging the Lottery", eq. 1): a fixed sparsity,
    and every ``frequency`` steps from ``begin_step`` up to ``end_step`` a drop/regrow of

    ``f(t) = fraction / 2 * (1 + cos(pi * (t - begin_step) / (end_step - begin_step)))``

    of each layer's active weights (``alpha = fraction``, ``T_end = end_step``).

    Raises:
      ValueError: a sparsity outside ``[0, 1)``, a fraction outside ``(0, 1)``,
        ``frequency < 1`` or ``end_step <= begin_step``.
    """
    s = allocate.check_sparsity(sparsity)
    alpha = check_fraction(fraction)
    is_update = update_steps(begin_step=begin_step, end_step=end_step, frequency=frequency)
    _check_step("end_step", end_step, begin_step + 1)
    span = end_step - begin_step

    def update_fraction(step: Step) -> jax.Array:
        t = jnp.clip(jnp.asarray(step, jnp.float32), begin_step, end_step) - begin_step
        return jnp.asarray(alpha / 2 * (1 + jnp.cos(jnp.pi * t / span)), jnp.float32)

    return SparsitySchedule(
        sparsity=lambda t: jnp.full((), s, jnp.float32),
        is_update_step=is_update,
        final_sparsity=s,
        update_fraction=update_fraction,
    )


def iterative_sparsities(final_sparsity: float, *, rounds: int) -> list[float]:
    """Per-round targets for iterative magnitude pruning: ``1 - (1 - s_f) ** (r / rounds)``.

    Each round removes the same fraction of the weights that remain (Frankle & Carbin 2019
    prune 20 % per round; ``rounds`` of them reach ``s_f``).
    """
    allocate.check_sparsity(final_sparsity, what="final_sparsity")
    _check_step("rounds", rounds, 1)
    return [1.0 - (1.0 - final_sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def lottery_round(
    trained_params: PyTree,
    masks: PyTree,
    rewind_params: PyTree,
    *,
    sparsity: float,
    scope: str = "layer",
    distribution: str = "uniform",
    prunable: PyTree | None = None,
) -> tuple[PyTree, PyTree]:
    """One prune-and-rewind round of lottery-ticket training.

    Prunes ``trained_params`` by magnitude to ``sparsity`` (already-pruned weights stay
    pruned), then rewinds the survivors to ``rewind_params``: the initial weights (Frankle &
    Carbin 2019) or the weights of an early step (Frankle et al. 2020, "rewinding").

    Args:
      trained_params: params at the end of this round's training.
      masks: the masks this round trained with (:func:`dense_masks` for the first round).
      rewind_params: params to restart from (initial or early-step).
      sparsity: the overall target after this round (see :func:`iterative_sparsities`).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"``.
      prunable: bool pytree from :func:`select_prunable`; default kernels with ndim >= 2.

    Returns:
      ``(rewound_params, next_masks)``: retrain the rewound params under
      ``prune.wrap(tx, None, prune.fixed())`` with the masks put in its state by
      :func:`prune.replace_masks` (one compiled step for every round).

    Raises:
      ValueError: mismatched trees or invalid options.
    """
    masks_lib.check_masks(trained_params, masks)
    masks_lib.check_masks(rewind_params, masks, what="masks (vs rewind_params)")
    next_masks = allocate.compute_masks(
        trained_params,
        sparsity=sparsity,
        scope=scope,
        distribution=distribution,
        prunable=prunable,
        masks=masks,
    )
    return masks_lib.apply_masks(rewind_params, next_masks), next_masks
