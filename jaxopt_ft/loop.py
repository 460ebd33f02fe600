"""The resumable training loop: `fit` drives a pure step function from Python.

``fit`` jits ``train_step(state, batch, key) -> (state, metrics)`` with the state donated (or
runs it data-parallel through a `jaxopt_ft.parallel` strategy), one compiled call per step,
and resumes from orbax checkpoints so a restarted run ends exactly where an uninterrupted one
does. It is re-exported as ``jaxopt_ft.train.fit``.

Steps are *micro-steps*: with gradient accumulation (``optim.make(..., accumulate_steps=k)``)
`fit`'s ``steps`` counts batches, and the parameters move every k-th step.

Non-finite updates: when the optimizer is guarded (``optim.make(..., skip_nonfinite=True)``),
a step whose gradient holds a NaN or Inf leaves the parameters, optimizer state and BatchNorm
statistics untouched, and its metrics carry ``nonfinite_consecutive`` and ``nonfinite_total``.
With ``fit(..., nan_policy="stop")`` the run ends after ``max_consecutive_nonfinite`` such
steps in a row with :class:`NonFiniteError` (a ValueError: the CLI prints it as one line and
exits with code 2), without saving a checkpoint past the last good one.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from jaxopt_ft import checkpoint as ckpt_lib
from jaxopt_ft import optim, parallel

PyTree = Any
Batch = dict[str, Any]
StepFn = Callable[..., tuple[Any, dict[str, jax.Array]]]

NAN_POLICIES = ("skip", "stop")


class NonFiniteError(ValueError):
    """Training hit too many consecutive non-finite updates (``nan_policy="stop"``)."""


_CHECK_LAG = 8


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _default_step(state, batch, base_key, train_step):
    # The step key is derived inside the compiled call: no extra dispatch per step. The step
    # function is a static argument, so fitting again with the same step function and an
    # equal state structure (e.g. several seeds sharing one optimizer) reuses the program.
    return train_step(state, batch, jax.random.fold_in(base_key, state.step))


@functools.lru_cache(maxsize=64)
def _strategy_step(strategy: parallel.Strategy, train_step: StepFn) -> StepFn:
    """``strategy.step`` of ``train_step`` with the step key derived on device (cached)."""

    def keyed_step(state, batch, base_key):
        # The same key on every device: replicas must agree on random choices that move the
        # shared parameters (PCGrad's task order, a sampled task). Per-example randomness under
        # pmap folds in the device index itself (`make_train_step(axis_name=...)`).
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


def _rewrite_metrics(path: str, phase: str, keep_upto: int) -> None:
    """Drops this phase's records after ``keep_upto`` (a resumed run logs them again)."""
    if not os.path.exists(path):
        return
    kept = [
        rec
        for rec in read_metrics(path)
        if not (rec.get("phase", "train") == phase and rec.get("step", 0) > keep_upto)
    ]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(rec) + "\n" for rec in kept))
    os.replace(tmp, path)


def _last_logged(path: str, phase: str, step: int) -> dict | None:
    """The ``metrics.jsonl`` record of ``phase`` at ``step``, if one was logged."""
    found = None
    for rec in read_metrics(path):
        if rec.get("phase", "train") == phase and rec.get("step") == step and "loss" in rec:
            found = rec
    return found


def _streak_error(done, metrics, *, limit, phase, ckpt) -> NonFiniteError | None:
    """The error for a run of ``limit`` skipped updates ending at step ``done``, else None."""
    if "nonfinite_consecutive" not in metrics:
        return None
    run = int(np.max(np.asarray(jax.device_get(metrics["nonfinite_consecutive"]))))
    if run < limit:
        return None
    total = int(np.max(np.asarray(jax.device_get(metrics["nonfinite_total"]))))
    kept = ckpt.latest_step() if ckpt else None
    if kept is not None:
        where = f"the last checkpoint (step {kept}) is kept"
    else:
        where = "no checkpoint was written" if ckpt else "nothing was saved (no workdir)"
    return NonFiniteError(
        f"Training stopped at step {done} of phase {phase!r}: {run} consecutive non-finite "
        f"updates (steps {done - run + 1}-{done}, {total} skipped in all); {where}. Lower the "
        "learning rate, set optimizer.clip_norm, check the data, or use train.nan_policy='skip'."
    )


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
    jit_step: Callable[[StepFn], StepFn] | None = None,
    nan_policy: str = "skip",
    max_consecutive_nonfinite: int = 10,
    strategy: parallel.Strategy | None = None,
) -> tuple[Any, dict[str, float]]:
    """Trains ``state`` for ``steps`` steps in total, resuming from ``workdir`` if possible.

    Args:
      state: the initial state (also the restore target): a `jaxopt_ft.train.TrainState`, or any
        flax struct with ``step``, ``opt_state``, ``tree()`` and ``replace_tree()`` (e.g. the
        multi-task state).
      train_step: a pure step function.
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
      progress: show a tqdm bar (only when stderr is a terminal).
      jit_step: compiles the step (default ``jax.jit`` with the state donated); data-parallel
        wrappers plug in here.
      nan_policy: ``"skip"``: non-finite updates (skipped by a guarded optimizer) are only
        counted; ``"stop"``: after ``max_consecutive_nonfinite`` of them in a row, raise
        :class:`NonFiniteError` naming the step. Needs a step whose metrics carry
        ``nonfinite_consecutive`` (`make_train_step` with ``optim.make(...,
        skip_nonfinite=True)``); without them there is nothing to check.
      max_consecutive_nonfinite: the run length that stops training under ``"stop"``.
      strategy: runs the step data-parallel (:func:`jaxopt_ft.parallel.make`): ``batches``
        still yields the *global* batch (its size must divide by the device count), checkpoints
        hold the plain layout (so they restore onto any device count), and the returned state
        is a single-device copy, ready for evaluation. Every device gets the same step key.
        Only the main process writes ``metrics.jsonl``. Cannot be combined with ``jit_step``.

    Returns:
      ``(state, summary)`` with ``final_train_loss``, ``train_steps_per_s``, ``train_wall_s``,
      and ``nonfinite_updates`` (skipped updates so far) when the optimizer is guarded.

    Raises:
      NonFiniteError: ``nan_policy="stop"`` and too many consecutive non-finite updates; the
        checkpoints written before stay as they were (no checkpoint is saved past the last
        step checked to be within the limit).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps!r}.")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(
            f"nan_policy={nan_policy!r} is not accepted; choose one of: {', '.join(NAN_POLICIES)}."
        )
    limit = max_consecutive_nonfinite
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(
            f"max_consecutive_nonfinite must be an integer >= 1, got {max_consecutive_nonfinite!r}."
        )
    if strategy is not None and jit_step is not None:
        raise ValueError("Pass either strategy or jit_step to fit, not both.")
    if strategy is not None and strategy.mode == "none":
        strategy = None  # the default path below is the same, with a shared compile cache
    ckpt = None
    start = 0
    main = parallel.is_main_process()
    metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir and main else None
    if strategy is not None and workdir:
        # The checkpoint layout on this strategy's devices: the restore target, so a checkpoint
        # written with any device count comes back already placed.
        state = strategy.unwrap(strategy.prepare(state))
    if workdir:
        ckpt = ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints", phase), max_to_keep=max_to_keep
        )
        latest = ckpt.latest_step()
        restored = ckpt.restore(state.tree())
        if restored is not None:
            start, tree = restored
            state = state.replace_tree(tree)
            if latest is not None and start < latest and main:
                ckpt.delete_after(start)
        if metrics_path:
            _rewrite_metrics(metrics_path, phase, start)

    def save_tree(state):  # the checkpoint layout of any state type with a .tree()
        return (strategy.unwrap(state) if strategy is not None else state).tree()

    if strategy is not None:
        state = strategy.prepare(state)
        step_fn = _strategy_step(strategy, train_step)

    elif jit_step is None:
        step_fn = functools.partial(_default_step, train_step=train_step)
    else:

        def keyed_step(state, batch, base_key):
            return train_step(state, batch, jax.random.fold_in(base_key, state.step))

        step_fn = jit_step(keyed_step)
    last = {}
    t_start = time.perf_counter()
    t_first = None
    bar = None

    # Under "stop", every step's counters are read, but only _CHECK_LAG steps later, when that
    # step has long finished: reading them at once would stall the dispatch pipeline.
    pending = collections.deque()

    def check_finite(keep: int) -> None:
        while len(pending) > keep:
            err = _streak_error(*pending.popleft(), limit=limit, phase=phase, ckpt=ckpt)
            if err is not None:
                bar.close()
                if ckpt:
                    ckpt.close()
                raise err

    if start < steps:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=steps,
            initial=start,
            desc=phase,
            disable=not (progress and sys.stderr.isatty()),
            leave=False,
        )
        it = batches(start)
        for step in range(start, steps):
            batch = next(it)
            state, metrics = step_fn(state, batch, key)
            if nan_policy == "stop":
                pending.append((step + 1, metrics))
                check_finite(_CHECK_LAG)
            if t_first is None:
                jax.block_until_ready(metrics)
                t_first = time.perf_counter()
            done = step + 1
            if done % log_every == 0 or done == steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - t_first
                rate = (done - start - 1) / elapsed if elapsed > 0 else float("nan")
                bar.set_postfix(loss=f"{last['loss']:.4f}", steps_per_s=f"{rate:.0f}")
                if metrics_path:
                    rec = {"phase": phase, "step": done, **last, "steps_per_s": rate}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            bar.update(1)
            if ckpt and checkpoint_every and done % checkpoint_every == 0 and done < steps:
                check_finite(0)  # never save past a stopping point
                ckpt.save(done, save_tree(state))
        check_finite(0)
        bar.close()
    if ckpt:
        if steps > 0 or ckpt.latest_step() is None:
            ckpt.save(steps, save_tree(state))
        ckpt.close()
    jax.block_until_ready(state)
    if strategy is not None:
        state = parallel.local(strategy.unwrap(state))
    t_end = time.perf_counter()
    ran = steps - start
    summary = {"train_wall_s": t_end - t_start}
    if ran > 1 and t_first is not None and t_end > t_first:
        summary["train_steps_per_s"] = (ran - 1) / (t_end - t_first)
    if "loss" in last:
        summary["final_train_loss"] = last["loss"]
    elif metrics_path and steps > 0:
        # Nothing left to run (a finished run started again): report what its log says.
        logged = _last_logged(metrics_path, phase, steps)
        if logged:
            summary["final_train_loss"] = logged["loss"]
            if logged.get("steps_per_s") is not None:
                summary["train_steps_per_s"] = logged["steps_per_s"]
    counts = optim.nonfinite_counts(state.opt_state)
    if counts is not None:
        summary["nonfinite_updates"] = int(np.max(np.asarray(jax.device_get(counts["total"]))))
    return state, summary
