"""Side-by-side timing with a fake clock: exact samples, call order and call counts."""

import jax
import jax.numpy as jnp
import pytest

from jaxopt_ft import timing


class FakeClock:
    """A seconds clock that moves only when a fake call does its work."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def __call__(self):
        return self.now

    def work(self, name, seconds):
        """A call named ``name`` whose k-th run takes ``seconds[k]`` (the last one repeats)."""
        durations = list(seconds)

        def fn():
            self.log.append(name)
            self.now += durations.pop(0) if len(durations) > 1 else durations[0]
            return jnp.zeros(())

        return fn


def test_time_rounds_interleaves_and_returns_ms_per_call():
    clock = FakeClock()
    calls = {"a": clock.work("a", [0.25]), "b": clock.work("b", [0.5])}
    out = timing.time_rounds(calls, repeats=3, number=4, warmup=2, timer=clock)
    assert clock.log == ["a", "a", "b", "b"] + (["a"] * 4 + ["b"] * 4) * 3
    assert out == {"a": [250.0] * 3, "b": [500.0] * 3}


def test_medians_and_paired_ratio_over_rounds():
    clock = FakeClock()
    calls = {"a": clock.work("a", [1.0, 3.0, 2.0]), "b": clock.work("b", [2.0, 2.0, 8.0])}
    rounds = timing.time_rounds(calls, repeats=3, warmup=0, timer=clock)
    assert rounds == {"a": [1000.0, 3000.0, 2000.0], "b": [2000.0, 2000.0, 8000.0]}
    # The medians are equal, but the per-round ratios (0.5, 1.5, 0.25) have median 0.5.
    assert timing.median_ratio(rounds["a"], rounds["b"]) == 0.5
    calls = {"a": clock.work("a", [1.0, 3.0, 2.0]), "b": clock.work("b", [2.0, 2.0, 8.0])}
    ms = timing.time_side_by_side(calls, repeats=3, warmup=0, timer=clock)
    assert ms == {"a": 2000.0, "b": 2000.0}


def test_interleave_collects_results_in_round_order():
    count = {"x": 0, "y": 0}
    order = []

    def bump(name):
        count[name] += 1
        order.append(name)
        return f"{name}{count[name]}"

    out = timing.interleave({"x": lambda: bump("x"), "y": lambda: bump("y")}, rounds=2)
    assert out == {"x": ["x1", "x2"], "y": ["y1", "y2"]}
    assert order == ["x", "y", "x", "y"]


def test_time_side_by_side_runs_jitted_calls():
    traced, calls = [], []
    f = jax.jit(lambda x: (traced.append(1), x * 2)[1])

    def call():
        calls.append(1)
        return f(jnp.ones(3))

    ms = timing.time_side_by_side({"f": call}, repeats=2, number=3)
    assert len(traced) == 1 and len(calls) == 1 + 2 * 3
    assert list(ms) == ["f"] and ms["f"] >= 0.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"repeats": 0}, "repeats=0 must be an integer >= 1"),
        ({"repeats": 2, "number": True}, "number=True must be an integer >= 1"),
        ({"repeats": 2, "warmup": -1}, "warmup=-1 must be an integer >= 0"),
    ],
)
def test_bad_counts_are_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        timing.time_side_by_side({"f": lambda: None}, **kwargs)


def test_median_ratio_needs_paired_samples():
    with pytest.raises(ValueError, match="got 2 and 1"):
        timing.median_ratio([1.0, 2.0], [1.0])
