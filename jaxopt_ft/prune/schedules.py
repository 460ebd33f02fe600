"""Sparsity schedules (one-shot, gradual polynomial) and lottery-ticket rounds with rewinding.

A :class:`SparsitySchedule` says, for an update step ``t``, what the target sparsity is and
whether masks are recomputed at ``t``. Both functions are jnp-traceable so :func:`prune.wrap`
can evaluate them on its step counter inside ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

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
    """

    sparsity: Callable[[Step], jax.Array]
    is_update_step: Callable[[Step], jax.Array]
    final_sparsity: float


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
      ``(rewound_params, next_masks)``: retrain the rewound params with
      ``prune.wrap(tx, masks=next_masks)``, which keeps the pruned weights at zero.

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
