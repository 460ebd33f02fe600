"""The resumable training loop: `fit` drives a pure step function from Python.

``fit`` compiles ``train_step(state, batch, key) -> (state, metrics)`` through a
`jaxopt_ft.parallel` strategy (plain ``jax.jit`` with the state donated by default), runs one
compiled call per step, and resumes from orbax checkpoints so a restarted run ends exactly where
an uninterrupted one does. Its parts are small and named: :func:`compile_step`,
:func:`restore`, :class:`MetricsLog` and :class:`NonFiniteMonitor`.

Steps are *micro-steps*: with gradient accumulation (``optim.make(..., accumulate_steps=k)``)
`fit`'s ``steps`` counts batches, and the parameters move every k-th step.

Non-finite updates: when the optimizer is guarded (``optim.make(..., skip_nonfinite=True)``),
a step whose gradient holds a NaN or Inf leaves the parameters, optimizer state and BatchNorm
statistics untouched, and its metrics carry ``nonfinite_consecutive`` and ``nonfinite_total``.
With ``fit(..., nan_policy="stop")`` the run ends after ``max_consecutive_nonfinite`` such
steps in a row with :class:`NonFiniteError` (a ValueError: the CLI prints it as one line and
exits with code 2), without saving a checkpoint past the last good one. A phase that ends with
non-finite parameters raises :class:`NonFiniteModelError` after saving them (the CLI exits with
code 3), so a NaN model never passes for a result.

Stopping: after `jaxopt_ft.stopping.request` (the CLI calls it on SIGTERM / SIGINT) the
running phase saves a checkpoint at the step it has reached and raises `stopping.Interrupted`;
resuming gives what the uninterrupted run gives, also in phases that otherwise save only at
the end.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from jaxopt_ft import checkpoint as ckpt_lib
from jaxopt_ft import events, optim, parallel, stopping

PyTree = Any
Batch = dict[str, Any]
StepFn = Callable[..., tuple[Any, dict[str, jax.Array]]]

NAN_POLICIES = ("skip", "stop")


class NonFiniteError(ValueError):
    """Training hit too many consecutive non-finite updates (``nan_policy="stop"``)."""


class NonFiniteModelError(RuntimeError):
    """A phase ended with non-finite parameters (saved, so that they can be inspected)."""


@functools.lru_cache(maxsize=64)
def compile_step(strategy: parallel.Strategy, train_step: StepFn) -> StepFn:
    """``strategy.step`` of ``train_step`` with the step key derived on device (cached).

    The compiled step takes ``(state, batch, base_key)`` and runs ``train_step`` with
    ``fold_in(base_key, state.step)``: no extra dispatch per step, and the same key on every
    device (replicas must agree on random choices that move shared parameters; per-example
    randomness under pmap folds in the device index inside `train.make_train_step`). Fitting
    again with the same step function and strategy reuses the compiled program.
    """

    def keyed_step(state, batch, base_key):
        return train_step(state, batch, jax.random.fold_in(base_key, state.step))

    return strategy.step(keyed_step)


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` (none when it is missing; a line cut by a kill is
    skipped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """One phase's records in ``metrics.jsonl`` and its TensorBoard scalars (a no-op without a
    path; ``events`` is set once the phase's start step is known)."""

    def __init__(self, path: str | None, phase: str):
        self.path, self.phase = path, phase
        self.events: events.EventWriter | None = None

    def _mine(self, rec: dict) -> bool:
        return rec.get("phase", "train") == self.phase

    def truncate(self, keep_upto: int) -> None:
        """Drops this phase's records after step ``keep_upto`` (a resumed run logs them again)."""
        if not self.path or not os.path.exists(self.path):
            return
        records = read_metrics(self.path)
        kept = [r for r in records if not (self._mine(r) and r.get("step", 0) > keep_upto)]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(rec) + "\n" for rec in kept))
        os.replace(tmp, self.path)

    def append(self, step: int, values: dict[str, float]) -> None:
        if self.path:
            # Non-finite numbers are written as null: every line stays valid JSON.
            values = {k: v if math.isfinite(v) else None for k, v in values.items()}
            with open(self.path, "a") as f:
                f.write(json.dumps({"phase": self.phase, "step": step, **values}) + "\n")
        if self.events:
            self.events.scalars(step, values)

    def at(self, step: int) -> dict | None:
        """The record of this phase at ``step`` that has a loss, if one was logged."""
        found = None
        if self.path:
            for rec in read_metrics(self.path):
                if self._mine(rec) and rec.get("step") == step and "loss" in rec:
                    found = rec
        return found


class NonFiniteMonitor:
    """Stops a run after ``limit`` consecutive skipped updates (``nan_policy="stop"``).

    Every step's counters are read, but only ``lag`` steps later, when that step has long
    finished: reading them at once would stall the dispatch pipeline.
    """

    def __init__(self, *, enabled: bool, limit: int, phase: str, ckpt, lag: int = 8):
        self.enabled, self.limit, self.phase, self.ckpt = enabled, limit, phase, ckpt
        self.lag = lag
        self.pending: collections.deque = collections.deque()

    def add(self, done: int, metrics: dict) -> None:
        if self.enabled and "nonfinite_consecutive" in metrics:
            self.pending.append((done, metrics))
            self.check(keep=self.lag)

    def check(self, keep: int = 0) -> None:
        """Raises :class:`NonFiniteError` for a streak among all but the last ``keep`` steps."""
        while len(self.pending) > keep:
            done, metrics = self.pending.popleft()
            run = int(np.max(np.asarray(jax.device_get(metrics["nonfinite_consecutive"]))))
            if run >= self.limit:
                total = int(np.max(np.asarray(jax.device_get(metrics["nonfinite_total"]))))
                raise self._error(done, run, total)

    def _error(self, done: int, run: int, total: int) -> NonFiniteError:
        kept = self.ckpt.latest_step() if self.ckpt else None
        if kept is not None:
            where = f"the last checkpoint (step {kept}) is kept"
        else:
            where = "no checkpoint was written" if self.ckpt else "nothing was saved (no workdir)"
        return NonFiniteError(
            f"Training stopped at step {done} of phase {self.phase!r}: {run} consecutive "
            f"non-finite updates (steps {done - run + 1}-{done}, {total} skipped in all); "
            f"{where}. Lower the learning rate, set optimizer.clip_norm, check the data, or use "
            "train.nan_policy='skip'."
        )


def restore(ckpt: ckpt_lib.Checkpointer, state: Any, *, main: bool) -> tuple[Any, int]:
    """The latest good checkpoint restored into ``state``'s layout, and its step (0: none).

    Checkpoints newer than the restored one (unreadable ones that were skipped) are deleted by
    the main process, so the run continues from a consistent history.
    """
    latest = ckpt.latest_step()
    restored = ckpt.restore(state.tree())
    if restored is None:
        return state, 0
    start, tree = restored
    if latest is not None and start < latest and main:
        ckpt.delete_after(start)
    return state.replace_tree(tree), start


def _check_args(steps: int, nan_policy: str, limit: int) -> None:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}.")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(
            f"nan_policy={nan_policy!r} is not accepted; choose one of: {', '.join(NAN_POLICIES)}."
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_consecutive_nonfinite must be an integer >= 1, got {limit!r}.")


def fit(
    state: Any,
    train_step: StepFn,
    batches: Callable[[int], Iterator[Batch]],
    *,
    steps: int,
    key: jax.Array,
    workdir: str | None = None,
    phase: str = "train",
    checkpoint_every: int = 0,
    max_to_keep: int = 3,
    log_every: int = 100,
    progress: bool = True,
    nan_policy: str = "skip",
    max_consecutive_nonfinite: int = 10,
    strategy: parallel.Strategy | None = None,
    learning_rate: Callable[[int], Any] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Trains ``state`` for ``steps`` steps in total, resuming from ``workdir`` if possible.

    Args:
      state: the initial state (also the restore target): a `jaxopt_ft.train.TrainState`, or any
        flax struct with ``step``, ``opt_state``, ``tree()`` and ``replace_tree()``.
      train_step: a pure step function (`jaxopt_ft.train.make_train_step`).
      batches: ``start_step -> iterator`` of batches; the batch at step k must depend only on k,
        so a resumed run sees exactly the batches an uninterrupted run sees.
      steps: total number of steps of this phase.
      key: the phase's key; step k uses ``jax.random.fold_in(key, k)``.
      workdir: when given, checkpoints go to ``workdir/checkpoints/<phase>`` and metrics are
        appended to ``workdir/metrics.jsonl``.
      phase: name of this training phase (experiments with several phases resume each).
      checkpoint_every: save every that many steps (0: only at the end).
      max_to_keep: checkpoints kept.
      log_every: metrics logging interval.
      progress: show a tqdm bar on a terminal, else a line on stderr per logged step.
      nan_policy: ``"skip"``: non-finite updates (skipped by a guarded optimizer) are only
        counted; ``"stop"``: after ``max_consecutive_nonfinite`` of them in a row, raise
        :class:`NonFiniteError` naming the step.
      max_consecutive_nonfinite: the run length that stops training under ``"stop"``.
      strategy: runs the step data-parallel (:func:`jaxopt_ft.parallel.make`; default mode
        ``none``): ``batches`` still yields the *global* batch, checkpoints hold the plain
        layout (so they restore onto any device count), and the returned state is a
        single-device copy, ready for evaluation. Only the main process writes
        ``metrics.jsonl``.
      learning_rate: the optimizer's schedule (``update count -> rate``) or None; when given,
        every logged record carries ``learning_rate`` at its step. Every record also carries
        ``sparsity``, the fraction of parameters that are exactly zero.

    With a ``workdir``, the logged records also go to TensorBoard event files in
    ``workdir/tensorboard/<phase>`` (`jaxopt_ft.events`).

    Returns:
      ``(state, summary)`` with ``final_train_loss``, ``train_steps_per_s``, ``train_wall_s``,
      and ``nonfinite_updates`` (skipped updates so far) when the optimizer is guarded.

    Raises:
      NonFiniteError: ``nan_policy="stop"`` and too many consecutive non-finite updates; the
        checkpoints written before stay as they were.
      NonFiniteModelError: the phase ended with non-finite parameters (they are saved).
      stopping.Interrupted: a stop was requested; the state at the step reached is saved.

    Over 80 lines only through this docstring: the body is a sequence of calls to the named
    parts (``_resume``, ``compile_step``, ``_saver``, ``_stopper``, ``_run``, ``_summary``).
    """
    _check_args(steps, nan_policy, max_consecutive_nonfinite)
    strategy = strategy or parallel.make("none")
    t_start = time.perf_counter()
    state, start, ckpt, log = _resume(state, strategy, workdir, phase, max_to_keep)
    monitor = NonFiniteMonitor(
        enabled=nan_policy == "stop", limit=max_consecutive_nonfinite, phase=phase, ckpt=ckpt
    )
    state = strategy.prepare(state)
    try:
        state, last, t_first = _run(
            state,
            compile_step(strategy, train_step),
            batches,
            start=start,
            steps=steps,
            key=key,
            log=log,
            log_every=log_every,
            monitor=monitor,
            save=_saver(ckpt, strategy, checkpoint_every, steps),
            progress=progress,
            extra=functools.partial(_extra_scalars, learning_rate),
            stop=_stopper(ckpt, strategy, phase),
        )
        if ckpt and (steps > 0 or ckpt.latest_step() is None):
            ckpt.save(steps, strategy.unwrap(state).tree())
    finally:
        if ckpt:
            ckpt.close()
        if log.events:
            log.events.close()
    jax.block_until_ready(state)
    state = parallel.local(strategy.unwrap(state))
    _check_finite(state, phase, steps)
    return state, _summary(state, last, log, start, steps, t_start, t_first)


def _resume(state, strategy, workdir: str | None, phase: str, max_to_keep: int):
    """``(state, start step, checkpointer or None, metrics log)`` of a phase in ``workdir``."""
    main = parallel.is_main_process()
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl") if workdir and main else None, phase)
    if not workdir:
        return state, 0, None, log
    ckpt = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints", phase), max_to_keep=max_to_keep
    )
    # The restore target in this strategy's layout: a checkpoint written with any device count
    # comes back already placed.
    state, start = restore(ckpt, strategy.unwrap(strategy.prepare(state)), main=main)
    log.truncate(start)
    if main:
        # Points past the checkpoint are logged again by this run; TensorBoard drops the old.
        purge = start + 1 if start else None
        log.events = events.EventWriter(events.logdir(workdir, phase), purge_step=purge)
    return state, start, ckpt, log


def _saver(ckpt, strategy, every: int, steps: int) -> Callable[..., None] | None:
    """``(done, state, monitor) -> None`` saving a checkpoint on the cadence (None: never)."""
    if not ckpt or not every:
        return None

    def save(done: int, state: Any, monitor: NonFiniteMonitor) -> None:
        if done % every == 0 and done < steps:
            monitor.check()  # never save past a stopping point
            ckpt.save(done, strategy.unwrap(state).tree())

    return save


def _stopper(ckpt, strategy, phase: str) -> Callable[..., None]:
    """``(done, state, monitor) -> None`` raising Interrupted (after a save) once asked to stop."""

    def stop(done: int, state: Any, monitor: NonFiniteMonitor) -> None:
        if not stopping.requested():
            return
        monitor.check()  # never save past a stopping point
        saved = ckpt is not None and done > 0
        if saved and ckpt.latest_step() != done:
            ckpt.save(done, strategy.unwrap(state).tree())
        raise stopping.Interrupted(phase, done, saved)

    return stop


def _check_finite(state: Any, phase: str, steps: int) -> None:
    flat = jax.tree_util.tree_flatten_with_path(getattr(state, "params", None))[0]
    flat = [(p, x) for p, x in flat if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
    finite = jax.device_get([jax.numpy.isfinite(x).all() for _, x in flat])
    bad = [
        jax.tree_util.keystr(p, simple=True, separator="/")
        for (p, _), ok in zip(flat, finite, strict=True)
        if not ok
    ]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteModelError(
            f"phase {phase!r} ended at step {steps} with non-finite parameters ({shown}); lower "
            "the learning rate, set optimizer.clip_norm, or use train.nan_policy='stop'."
        )


def _run(
    state,
    step_fn,
    batches,
    *,
    start,
    steps,
    key,
    log,
    log_every,
    monitor,
    save,
    progress,
    stop,
    extra,
):
    """The step loop; returns ``(state, last logged metrics, time of the first finished step)``."""
    last, t_first = {}, None
    stop(start, state, monitor)
    if start >= steps:
        return state, last, t_first
    from tqdm.auto import tqdm

    bar = tqdm(
        total=steps,
        initial=start,
        desc=log.phase,
        disable=not (progress and sys.stderr.isatty()),
        leave=False,
    )
    extra(state, start)  # compiles the logged extras now, outside the timed steps
    with bar:
        it = batches(start)
        for done in range(start + 1, steps + 1):
            state, metrics = step_fn(state, next(it), key)
            monitor.add(done, metrics)
            if t_first is None:
                jax.block_until_ready(metrics)
                t_first = time.perf_counter()
            if done % log_every == 0 or done == steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - t_first
                rate = (done - start - 1) / elapsed if elapsed > 0 else float("nan")
                bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{rate:.0f}")
                log.append(done, {**last, "steps_per_s": rate, **extra(state, done)})
                if progress and bar.disable:  # not a terminal: one line per logged step
                    print(
                        f"{log.phase}: step {done}/{steps}, loss {last['loss']:.4f}",
                        file=sys.stderr,
                    )
            bar.update(1)
            if save is not None:
                save(done, state, monitor)
            stop(done, state, monitor)
        monitor.check()
    return state, last, t_first


@jax.jit
def _sparsity(params: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(params)
    zeros = sum(jax.numpy.sum(x == 0) for x in leaves)
    return zeros / max(1, sum(x.size for x in leaves))


def _extra_scalars(learning_rate, state, done: int) -> dict[str, float]:
    """``sparsity`` of ``state.params`` and, with a schedule, ``learning_rate`` at step ``done``.

    The schedule counts optimizer updates (not micro-steps, nor skipped updates): the rate
    is the one of the last update, read from the schedule's own counter in the state.
    """
    params = getattr(state, "params", None)
    values = {} if params is None else {"sparsity": float(_sparsity(params))}
    if learning_rate is not None:
        counts = [
            x.count
            for x in jax.tree.leaves(
                state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState)
            )
            if isinstance(x, optax.ScaleByScheduleState)
        ]
        count = int(np.max(np.asarray(jax.device_get(counts[0])))) if counts else done
        values["learning_rate"] = float(learning_rate(max(count - 1, 0)))
    return values


def _summary(state, last, log: MetricsLog, start, steps, t_start, t_first) -> dict[str, float]:
    t_end = time.perf_counter()
    ran = steps - start
    summary = {"train_wall_s": t_end - t_start}
    if ran > 1 and t_first is not None and t_end > t_first:
        summary["train_steps_per_s"] = (ran - 1) / (t_end - t_first)
    if "loss" in last:
        summary["final_train_loss"] = last["loss"]
    elif steps > 0 and (logged := log.at(steps)):
        # Nothing left to run (a finished run started again): report what its log says.
        summary["final_train_loss"] = logged["loss"]
        if logged.get("steps_per_s") is not None:
            summary["train_steps_per_s"] = logged["steps_per_s"]
    counts = optim.nonfinite_counts(state.opt_state)
    if counts is not None:
        summary["nonfinite_updates"] = int(np.max(np.asarray(jax.device_get(counts["total"]))))
    return summary
