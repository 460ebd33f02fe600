"""Experiment ``hpo``: an Optuna study over the training recipe, shared by every worker.

Each trial draws a point of ``hpo.space`` (`jaxopt_ft.hpo`), trains the model for
``train.steps`` on the training split less a held-out ``hpo.validation_fraction`` (the test
split is never seen by the search), and reports the validation accuracy every
``hpo.eval_every`` steps to the pruner, which may stop it early. A trial's value is its final
validation accuracy. When ``batch_size`` is searched, a trial keeps the base run's epochs
(``train.steps * train.batch_size / batch_size`` steps) and its learning rate follows
``hpo.lr_scaling`` from ``train.batch_size``; intermediate values are reported at base-batch
steps so the pruner compares equal amounts of data.

The study lives in ``hpo.storage`` (default ``sqlite:///<workdir>/study.db``); start the same
command several times (or on several machines with a PostgreSQL/MySQL URL) and the workers share
it until ``hpo.trials`` trials have finished; a killed worker's trial is marked FAIL and a re-run
resumes the study. With ``hpo.evaluator='population'`` a worker asks ``hpo.population`` trials at
once and trains them in one vmapped program (`jaxopt_ft.population`).

At the end each worker writes the report from the whole study: rows = the trials table;
``best_overrides`` (the best trial as ``--config.`` overrides of the train config),
``best_test_accuracy`` (the best trial retrained on the whole training split, tested),
``trials``, ``wall_s``, ``lr_batch_slope`` (when batch size is searched); plots
optimization_history.png, param_importances.png and parallel_coordinate.png.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

import jax
import numpy as np
import optuna

from jaxopt_ft import data, hpo
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments import population as population_exp
from jaxopt_ft.experiments.settings import HpoSettings as Settings

# Workers of one study run in the same workdir at once (the CLI's workdir lock does not apply):
# the study database serializes them, and each trial trains without writing checkpoints there.
SHARES_WORKDIR = True


def storage_url(s: Settings, workdir: str) -> str:
    return s.hpo.storage or f"sqlite:///{os.path.abspath(os.path.join(workdir, 'study.db'))}"


def split(s: Settings, ds: data.Dataset) -> tuple[data.Dataset, data.Dataset]:
    """``(train, validation)``: a seeded random ``hpo.validation_fraction`` held out of ``ds``."""
    order = np.random.default_rng([s.seed, 7]).permutation(len(ds.label))
    n_val = max(1, round(s.hpo.validation_fraction * len(ds.label)))
    part = lambda idx: ds._replace(x=ds.x[np.sort(idx)], label=ds.label[np.sort(idx)])  # noqa: E731
    return part(order[n_val:]), part(order[:n_val])


def trial_settings(s: Settings, params: dict) -> tuple[Settings, int]:
    """``s`` with a trial's parameters applied, and the trial's step count."""
    base_bs = s.train.batch_size
    bs = int(params.get("batch_size", base_bs))
    steps = max(1, round(s.train.steps * base_bs / bs))
    lr = hpo.scaled_lr(
        params.get("learning_rate", s.optimizer.learning_rate), bs, base=base_bs,
        rule=s.hpo.lr_scaling,
    )  # fmt: skip
    o = dataclasses.replace(
        s.optimizer,
        name=params.get("optimizer", s.optimizer.name),
        learning_rate=lr,
        momentum=params.get("momentum", s.optimizer.momentum),
        weight_decay=params.get("weight_decay", s.optimizer.weight_decay),
    )
    sch = s.schedule
    if "schedule" in params or "warmup_fraction" in params:
        frac = params.get("warmup_fraction", sch.warmup_steps / s.train.steps)
        sch = dataclasses.replace(
            sch, name=params.get("schedule", sch.name), warmup_steps=int(frac * steps)
        )
    t = dataclasses.replace(
        s.train,
        batch_size=bs,
        steps=steps,
        label_smoothing=params.get("label_smoothing", s.train.label_smoothing),
    )
    return dataclasses.replace(s, optimizer=o, schedule=sch, train=t), steps


def overrides(s: Settings, params: dict) -> str:
    """The trial's settings as ``--config.`` overrides of a train config with ``s``'s base."""
    ts, steps = trial_settings(s, params)
    keys = {
        "optimizer.name": ts.optimizer.name,
        "optimizer.learning_rate": float(f"{ts.optimizer.learning_rate:.4g}"),
        "optimizer.momentum": float(f"{ts.optimizer.momentum:.4g}"),
        "optimizer.weight_decay": float(f"{ts.optimizer.weight_decay:.4g}"),
        "schedule.name": ts.schedule.name,
        "schedule.warmup_steps": ts.schedule.warmup_steps,
        "train.batch_size": ts.train.batch_size,
        "train.steps": steps,
        "train.label_smoothing": float(f"{ts.train.label_smoothing:.4g}"),
    }
    return " ".join(f"--config.{k}={v}" for k, v in keys.items())


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    h = s.hpo
    hpo.make_sampler(h.sampler, seed=s.seed, space=h.space)
    if h.sampler == "grid" and h.trials > (
        points := math.prod(len(v[1]) for v in h.space.values())
    ):
        raise ValueError(
            f"hpo.trials={h.trials} exceeds the {points} points of the grid of hpo.space; "
            f"set hpo.trials={points} or add values."
        )
    hpo.make_pruner(h.pruner, min_resource=h.eval_every, max_resource=s.train.steps)
    if h.storage:
        hpo.open_storage(h.storage, heartbeat_s=h.heartbeat_s)
    spec = h.space.get("schedule", ("choice", (s.schedule.name,)))
    for name in spec[1]:  # warm-up against the steps, under every schedule a trial may draw
        common.build_optimizer(s, steps=s.train.steps, schedule=name)
    if h.eval_every > s.train.steps:
        raise ValueError(
            f"hpo.eval_every={h.eval_every} exceeds train.steps={s.train.steps}: the pruner "
            "would see no intermediate value; lower it."
        )
    n_train = len(split(s, train_ds)[0].label)
    for spec in [h.space.get("batch_size")] if "batch_size" in h.space else []:
        sizes = spec[1] if spec[0] == "choice" else spec[1:]
        for b in sizes:
            if not isinstance(b, int) or not 1 <= b <= n_train:
                raise ValueError(
                    f"hpo.space.batch_size={spec!r}: {b!r} is not an integer in [1, {n_train}] "
                    "(the training part of the split)."
                )
            common.check_batch(s, b, "hpo.space.batch_size entry")
    if h.evaluator == "population":
        population_exp.check_parallel(s, h.population)


def _train_one(s: Settings, params: dict, parts, report: Callable[[int, float], bool]) -> float:
    """Trains one trial; ``report(base_step, val_accuracy)`` returns True to stop (pruned)."""
    train_ds, val_ds = parts
    ts, steps = trial_settings(s, params)
    model = common.build_model(ts, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(s))
    tx = common.build_optimizer(ts, steps=steps)
    state = common.new_state(model, k_init, train_ds.x[:1], tx)
    step = jax.jit(common.classification_step(ts), donate_argnums=0)
    batches = data.train_batches(train_ds, batch_size=ts.train.batch_size, seed=s.seed)
    scale = ts.train.batch_size / s.train.batch_size
    every = max(1, round(s.hpo.eval_every / scale))
    acc = 0.0
    for t in range(steps):
        state, _ = step(state, next(batches), jax.random.fold_in(k_train, t))
        if (t + 1) % every == 0 or t + 1 == steps:
            acc = common.evaluate(ts, state.apply_fn, state.variables(), val_ds)["test_accuracy"]
            if report(round((t + 1) * scale), acc):
                break
    return acc


def _tell(study, trial, value: float, *, pruned: bool) -> None:
    # A pruned trial's value is its last reported one (Optuna takes no value with PRUNED).
    if pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, value)


def _reseed(s: Settings) -> Callable:
    return lambda n: hpo.make_sampler(s.hpo.sampler, seed=s.seed * 100_003 + n, space=s.hpo.space)


def _run_sequential(s: Settings, study, storage, parts) -> None:
    while (trial := hpo.next_trial(study, s.hpo.trials, reseed=_reseed(s))) is not None:
        params = hpo.suggest(trial, s.hpo.space)
        pruned = [False]

        def report(step, acc, trial=trial, pruned=pruned):
            trial.report(acc, step)
            pruned[0] = trial.should_prune()
            return pruned[0]

        with hpo.heartbeat(study, storage, [trial]):
            try:
                value = _train_one(s, params, parts, report)
            except Exception:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
        _tell(study, trial, value, pruned=pruned[0])


def _run_population(s: Settings, study, storage, parts) -> None:
    while True:
        trials = []
        while len(trials) < s.hpo.population:
            trial = hpo.next_trial(study, s.hpo.trials, reseed=_reseed(s))
            if trial is None:
                break
            trials.append(trial)
        if not trials:
            return
        members = [{**hpo.suggest(t, s.hpo.space), "seed": s.seed} for t in trials]
        pruned = [False] * len(trials)

        def report(step, accs, trials=trials, pruned=pruned):
            for i, (t, acc) in enumerate(zip(trials, accs, strict=True)):
                if not pruned[i]:
                    t.report(float(acc), step)
                    pruned[i] = t.should_prune()
            return all(pruned)

        with hpo.heartbeat(study, storage, trials):
            try:
                accs = population_exp.train_members(s, members, parts, report=report)
            except Exception:
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                raise
        for t, acc, p in zip(trials, accs, pruned, strict=True):
            _tell(study, t, float(acc), pruned=p)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    del progress
    timer = common.Timer()
    h = s.hpo
    storage = hpo.open_storage(storage_url(s, workdir), heartbeat_s=h.heartbeat_s)
    study = hpo.open_study(
        storage,
        h.study_name,
        sampler=hpo.make_sampler(h.sampler, seed=s.seed, space=h.space),
        pruner=hpo.make_pruner(h.pruner, min_resource=h.eval_every, max_resource=s.train.steps),
    )
    parts = split(s, common.load_split(s, "train"))
    if h.evaluator == "population":
        _run_population(s, study, storage, parts)
    else:
        _run_sequential(s, study, storage, parts)
    from jaxopt_ft.experiments import hpo_report  # it imports this module

    return hpo_report.finish(s, study, workdir, wall_s=timer())


def retrain(s: Settings, params: dict) -> dict:
    """The trial's recipe trained on the whole training split; test loss and accuracy."""
    ts, steps = trial_settings(s, params)
    train_ds, test_ds = common.load_split(s, "train"), common.load_split(s, "test")
    model = common.build_model(ts, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(s))
    state = common.new_state(model, k_init, train_ds.x[:1], common.build_optimizer(ts, steps=steps))
    step = jax.jit(common.classification_step(ts), donate_argnums=0)
    batches = data.train_batches(train_ds, batch_size=ts.train.batch_size, seed=s.seed)
    for t in range(steps):
        state, _ = step(state, next(batches), jax.random.fold_in(k_train, t))
    out = common.evaluate(ts, state.apply_fn, state.variables(), test_ds)
    return {k: (v if math.isfinite(v) else None) for k, v in out.items()}
