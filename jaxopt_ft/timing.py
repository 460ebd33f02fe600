"""Timing compiled calls side by side, so that every variant sees the same machine load.

Each call is warmed up first (its compilation is not timed), then all calls take turns, one
round after another: a noisy stretch of the machine slows every variant of that round alike,
and medians over rounds (or the median of per-round ratios) compare them fairly.

Example:
    >>> fwd = jax.jit(model.apply)
    >>> ms = time_side_by_side(
    ...     {"dense": lambda: fwd(dense_vars, x), "pruned": lambda: fwd(pruned_vars, x)},
    ...     repeats=15,
    ... )
    >>> ms["pruned"] / ms["dense"]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax

T = TypeVar("T")


def _check_count(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}. Fix: pass e.g. 5.")


def interleave(calls: Mapping[str, Callable[[], T]], *, rounds: int) -> dict[str, list[T]]:
    """Calls every entry once per round, in turns, and returns each entry's results in order.

    For calls that measure themselves (e.g. a training loop reporting its own steps/s); to
    time calls from outside use :func:`time_rounds`.

    Args:
      calls: ``{name: fn}``; each round calls them in this order.
      rounds: How many rounds.

    Returns:
      ``{name: [result of round 0, round 1, ...]}``.

    Raises:
      ValueError: ``rounds`` is not a positive integer.
    """
    _check_count(rounds, "rounds", 1)
    out: dict[str, list[T]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            out[name].append(fn())
    return out


def time_rounds(
    calls: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    number: int = 1,
    warmup: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Milliseconds per call of every entry, for each of ``repeats`` interleaved rounds.

    Every call first runs ``warmup`` times (compilation; each result is blocked on). In a
    round each entry then runs ``number`` times back to back, and the time until its last
    result is ready (``jax.block_until_ready``), divided by ``number``, is that round's sample.

    Args:
      calls: ``{name: fn}``, each ``fn()`` doing one unit of work (a forward pass, a train
        step) and returning what to block on.
      repeats: Rounds, i.e. samples per entry.
      number: Calls per entry and round (dispatch of several calls overlaps, as in a loop).
      warmup: Untimed calls per entry before the first round.
      timer: Seconds clock (``time.perf_counter``; a fake clock in tests).

    Returns:
      ``{name: [ms per call in round 0, round 1, ...]}``.

    Raises:
      ValueError: ``repeats`` or ``number`` below 1, or ``warmup`` below 0.
    """
    _check_count(repeats, "repeats", 1)
    _check_count(number, "number", 1)
    _check_count(warmup, "warmup", 0)
    for fn in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())

    def timed(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            start = timer()
            for _ in range(number):
                out = fn()
            jax.block_until_ready(out)
            return (timer() - start) * 1e3 / number

        return run

    return interleave({name: timed(fn) for name, fn in calls.items()}, rounds=repeats)


def time_side_by_side(
    calls: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    number: int = 1,
    warmup: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median milliseconds per call of every entry over interleaved rounds.

    The medians of :func:`time_rounds`.

    Args:
      calls: ``{name: fn}``, as in :func:`time_rounds`.
      repeats: Rounds.
      number: Calls per entry and round.
      warmup: Untimed calls per entry first.
      timer: Seconds clock.

    Returns:
      ``{name: median ms per call}``.

    Raises:
      ValueError: As :func:`time_rounds`.
    """
    rounds = time_rounds(calls, repeats=repeats, number=number, warmup=warmup, timer=timer)
    return {name: statistics.median(samples) for name, samples in rounds.items()}


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]``.

    Both variants of a round ran back to back, so load that slows a round cancels in its
    ratio; this is steadier than the ratio of two medians when load drifts.

    Raises:
      ValueError: The lists differ in length or are empty.
    """
    if not numerator or len(numerator) != len(denominator):
        raise ValueError(
            f"median_ratio needs two equally long, non-empty lists of samples; got "
            f"{len(numerator)} and {len(denominator)}. Fix: pass two entries of one "
            "time_rounds / interleave result."
        )
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))
