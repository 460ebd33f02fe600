"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
WACV 2017, section 3.3), with the smoothing and suggestions popularised by fastai.

Train for a few hundred steps while the learning rate grows exponentially from ``min_lr`` to
``max_lr``; record each step's loss, smooth it with a bias-corrected exponential moving average
(``beta`` = 0.98), and stop once the smoothed loss exceeds ``diverge`` times its minimum. Two
suggestions are read off the smoothed curve:

- ``min_div10``: the rate at the minimum of the smoothed loss, divided by 10: the loss is
  still falling an order of magnitude below the rate where it bottoms out (the default
  ``suggestion``, the more conservative of the two in practice);
- ``steepest``: the rate where the smoothed loss falls fastest per unit of log learning rate
  (the most negative ``d loss / d log lr``), searched below the minimum.

On a quadratic with curvature ``h`` (largest Hessian eigenvalue), plain gradient descent
diverges above ``2 / h``; both suggestions land in ``[2 / h / 100, 2 / h]`` (the tests check
this band on a least-squares problem).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

PyTree = Any


class RangeTest(NamedTuple):
    """What :func:`run` measured.

    Attributes:
      lrs: the learning rate of each step taken.
      losses: each step's training loss (of the batch, before the step's update).
      smoothed: the bias-corrected exponential moving average of ``losses``.
      min_div10: the rate at the smoothed minimum, divided by 10.
      steepest: the rate of the steepest smoothed descent below the minimum.
      suggestion: ``min_div10``.
      stopped_early: True when the smoothed loss diverged before ``steps``.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    min_div10: float
    steepest: float
    suggestion: float
    stopped_early: bool


def check(*, min_lr: float, max_lr: float, steps: int, beta: float, diverge: float) -> None:
    """Raises ValueError for an empty or inverted range or out-of-range settings."""
    if not 0 < min_lr < max_lr:
        raise ValueError(
            f"The LR range [{min_lr!r}, {max_lr!r}] is empty or inverted; it needs "
            "0 < min_lr < max_lr (e.g. 1e-5 and 10)."
        )
    if int(steps) < 10:
        raise ValueError(f"An LR range test needs >= 10 steps, got steps={steps!r}.")
    if not 0 <= beta < 1:
        raise ValueError(f"The smoothing beta must be in [0, 1), got {beta!r}.")
    if not diverge > 1:
        raise ValueError(f"The divergence factor must be > 1, got diverge={diverge!r}.")


def schedule(*, min_lr: float, max_lr: float, steps: int) -> optax.Schedule:
    """``min_lr * (max_lr / min_lr) ** (t / (steps - 1))``: exponential from min to max."""
    ratio = math.log(max_lr / min_lr) / max(1, steps - 1)
    return lambda t: min_lr * jax.numpy.exp(ratio * t)


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """The bias-corrected exponential moving average ``avg_t / (1 - beta ** (t + 1))``."""
    losses = np.asarray(losses, np.float64)
    out = np.empty_like(losses)
    avg = 0.0
    for t, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[t] = avg / (1 - beta ** (t + 1))
    return out


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """``(min_div10, steepest)`` from a smoothed loss curve over increasing rates."""
    lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
    finite = np.isfinite(smoothed)
    if finite.sum() < 3:
        raise ValueError(
            "The LR range test has fewer than 3 finite losses; lower min_lr so training starts "
            "stable."
        )
    i_min = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
    upto = max(i_min, 2) + 1
    slope = np.gradient(smoothed[:upto], np.log(lrs[:upto]))
    return float(lrs[i_min] / 10.0), float(lrs[int(np.argmin(slope))])


def run(
    make_state: Callable[[optax.Schedule], Any],
    train_step: Callable,
    batches: Iterator,
    *,
    key: jax.Array,
    min_lr: float = 1e-6,
    max_lr: float = 10.0,
    steps: int = 300,
    beta: float = 0.98,
    diverge: float = 4.0,
) -> RangeTest:
    """Runs the range test.

    Args:
      make_state: ``schedule -> state``: a fresh training state whose optimizer takes its
        learning rate from ``schedule`` (e.g. ``optim.make("sgd", learning_rate=schedule)``).
      train_step: ``(state, batch, key) -> (state, metrics)`` with ``metrics["loss"]``
        (``train.make_train_step``); it is jitted here.
      batches: at least ``steps`` training batches.
      key: step t uses ``fold_in(key, t)``.
      min_lr, max_lr, steps: the exponential ramp.
      beta: the smoothing of the loss.
      diverge: stop once the smoothed loss exceeds this many times its minimum.

    Raises:
      ValueError: an empty or inverted range, bad settings, or no stable start.
    """
    check(min_lr=min_lr, max_lr=max_lr, steps=steps, beta=beta, diverge=diverge)
    sched = schedule(min_lr=min_lr, max_lr=max_lr, steps=steps)
    state = make_state(sched)
    step = jax.jit(train_step)
    lrs, losses = [], []
    avg, best, stopped = 0.0, math.inf, False
    for t in range(steps):
        state, metrics = step(state, next(batches), jax.random.fold_in(key, t))
        loss = float(metrics["loss"])
        lrs.append(float(sched(t)))
        losses.append(loss)
        avg = beta * avg + (1 - beta) * loss
        smoothed = avg / (1 - beta ** (t + 1))
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or (t > 10 and smoothed > diverge * best):
            stopped = True
            break
    lrs_a, losses_a = np.asarray(lrs), np.asarray(losses)
    sm = smooth(losses_a, beta)
    min_div10, steepest = suggest(lrs_a, sm)
    return RangeTest(lrs_a, losses_a, sm, min_div10, steepest, min_div10, stopped)


def plot(result: RangeTest, workdir: str, name: str = "lr_range.png") -> str:
    """Loss and smoothed loss against the rate (log x), with both suggestions marked."""
    from jaxopt_ft import report

    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(result.lrs, result.losses, lw=0.6, alpha=0.5, label="loss")
    ax.plot(result.lrs, result.smoothed, lw=1.5, label="smoothed")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size:
        ax.set_ylim(0.0, float(min(finite.max(), 4 * finite.min() + 1e-9)) * 1.05)
    for lr, what in ((result.min_div10, "min / 10"), (result.steepest, "steepest")):
        ax.axvline(lr, ls="--", lw=1, color="gray")
        ax.text(lr, ax.get_ylim()[1], f" {what}\n {lr:.2g}", fontsize=7, va="top")
    return report.save_plot(fig, workdir, name)
