"""Hyperparameter search on Optuna: search spaces, samplers, pruners, shared studies.

A search space is a plain mapping ``{parameter: spec}``; a spec is ``("log", low, high)``
(log-uniform float), ``("uniform", low, high)``, ``("int", low, high)`` or
``("choice", (a, b, ...))``. :func:`suggest` draws one point of it from an Optuna trial.

Studies live in an Optuna storage: an RDB URL (``sqlite:///study.db`` by default in the
workdir; ``postgresql://user:password@host/db`` or ``mysql+pymysql://...`` for workers on many
machines) opened with a heartbeat, so that the trial of a worker that dies (SIGKILL, a lost
machine) is marked FAIL by the next worker that asks for a trial, and the study goes on. Any
number of processes started with the same storage and study name share the study:
:func:`next_trial` hands each a new trial until ``n_trials`` have finished between them.

Samplers: TPE (Bergstra et al., NeurIPS 2011; the default), random, CMA-ES (Hansen, 2016) and
grid. Pruners stop trials whose intermediate values (validation accuracy every few steps) lag:
ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020; Optuna's
``SuccessiveHalvingPruner``, the default), median, Hyperband, none.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import optuna


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Heartbeats and stale-trial failing are what let workers share a study; Optuna flags them
    # experimental and expects Study.optimize, which the vmapped evaluator cannot use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


SPEC_KINDS = ("log", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("asha", "median", "hyperband", "none")
LR_SCALING = ("none", "linear", "sqrt")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def check_space(space: Mapping[str, Any], parameters: Sequence[str]) -> None:
    """Raises ValueError for an empty space, an unknown parameter or kind, or a bad range."""
    if not space:
        raise ValueError(f"The search space is empty; add parameters from {', '.join(parameters)}.")
    for name, spec in space.items():
        if name not in parameters:
            raise ValueError(
                f"Unknown search parameter {name!r}; accepted: {', '.join(parameters)}."
            )
        if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
            raise ValueError(
                f"Search parameter {name!r}: spec {spec!r} is not a (kind, ...) tuple."
            )
        kind = spec[0]
        if kind not in SPEC_KINDS:
            raise ValueError(
                f"Search parameter {name!r}: unknown kind {kind!r}; accepted: "
                f"{', '.join(SPEC_KINDS)}."
            )
        if kind == "choice":
            if len(spec) != 2 or isinstance(spec[1], str) or not spec[1]:
                raise ValueError(
                    f"Search parameter {name!r}: {spec!r} is empty; write ('choice', (a, b, ...))."
                )
            continue
        if len(spec) != 3 or not all(isinstance(v, int | float) for v in spec[1:]):
            raise ValueError(f"Search parameter {name!r}: {spec!r} must be ({kind!r}, low, high).")
        low, high = spec[1], spec[2]
        if not low < high or (kind == "log" and low <= 0):
            what = "0 < low < high" if kind == "log" else "low < high"
            raise ValueError(
                f"Search parameter {name!r}: the range [{low!r}, {high!r}] is empty or inverted; "
                f"it needs {what}."
            )


def suggest(trial: optuna.trial.BaseTrial, space: Mapping[str, Any]) -> dict[str, Any]:
    """One point of ``space`` drawn by ``trial``'s sampler (parameters in ``space`` order)."""
    out = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "choice":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]))
        else:
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=kind == "log")
    return out


def make_sampler(name: str, *, seed: int, space: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` seeded with ``seed``; ``grid`` needs a space of choices only."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES searches the continuous parameters; choices fall back to random draws.
        independent = optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=independent, warn_independent_sampling=False
        )
    if name == "grid":
        continuous = [k for k, spec in space.items() if spec[0] != "choice"]
        if continuous:
            raise ValueError(
                f"sampler 'grid' needs ('choice', values) for every parameter; {continuous} are "
                "ranges. Give them choices or use sampler 'tpe'."
            )
        return optuna.samplers.GridSampler({k: list(v[1]) for k, v in space.items()}, seed=seed)
    raise ValueError(f"Unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}.")


def make_pruner(name: str, *, min_resource: int, max_resource: int) -> optuna.pruners.BasePruner:
    """The pruner ``name``; resources are the steps at which trials report."""
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_resource)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=max_resource, reduction_factor=3
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"Unknown pruner {name!r}; accepted: {', '.join(PRUNERS)}.")


# What a worker sees when another creates the same database schema at the same moment.
_SCHEMA_RACE = ("already exists", "UNIQUE constraint failed", "database is locked")


def open_storage(url: str, *, heartbeat_s: int) -> optuna.storages.BaseStorage:
    """The RDB storage at ``url`` with a heartbeat of ``heartbeat_s`` seconds.

    A running trial whose heartbeat is older than ``2 * heartbeat_s`` belongs to a dead worker:
    the next worker to ask for a trial marks it FAIL.

    Raises:
      ValueError: the storage cannot be opened (bad URL, missing driver, unreachable server).
    """
    if "://" not in url:
        raise ValueError(
            f"Storage {url!r} is not a database URL; use e.g. 'sqlite:///study.db' or "
            "'postgresql://user:password@host/db'."
        )
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with _quiet():
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=2 * heartbeat_s,
                )
        except Exception as e:  # SQLAlchemy, driver and OS errors all mean the same to a user
            # Workers started together race to create the schema; the loser finds it made.
            if any(m in str(e) for m in _SCHEMA_RACE) and attempt < 4:
                time.sleep(0.5)
                continue
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"Storage {url!r} cannot be opened ({detail}); check the URL, its driver and "
                "that the database is reachable."
            ) from None
    raise AssertionError("unreachable")


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Creates the study ``name`` (maximising) or joins it when it exists."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def next_trial(
    study: optuna.Study,
    n_trials: int,
    *,
    reseed: Callable[[int], optuna.samplers.BaseSampler] | None = None,
) -> optuna.Trial | None:
    """A new trial of ``study``, or None once ``n_trials`` have finished or are running.

    ``reseed(n)`` (optional) gives the sampler for the trial asked when the study holds ``n``
    trials. TPE, random, CMA-ES and grid sampling read the study's history from the storage,
    so a sampler seeded by ``n`` keeps a single worker reproducible and keeps workers that
    join a study from repeating each other's draws (unless two ask at the same instant).

    Trials of dead workers are marked FAIL first (they are not counted, so a re-run makes up
    for them). When two workers ask at once and overshoot, the later trial is told FAIL with
    the user attribute ``surplus`` and None is returned.
    """
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    counted = (*FINISHED, optuna.trial.TrialState.RUNNING)
    if len(study.get_trials(deepcopy=False, states=counted)) >= n_trials:
        return None
    if reseed is not None:
        study.sampler = reseed(len(study.get_trials(deepcopy=False)))
    with _quiet():
        trial = study.ask()
    earlier = [
        t for t in study.get_trials(deepcopy=False, states=counted) if t.number < trial.number
    ]
    if len(earlier) >= n_trials:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return None
    return trial


@contextlib.contextmanager
def heartbeat(study: optuna.Study, storage: Any, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """Records the heartbeat of ``trials`` in ``storage`` from a thread while the block runs.

    A worker killed inside the block stops beating; :func:`next_trial` in any other (or a
    later) worker then marks its trials FAIL.
    """
    interval = storage.get_heartbeat_interval()
    study_id = storage.get_study_id_from_name(study.study_name)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]
    stop = threading.Event()
    # The first beat is recorded before the block starts: Optuna never fails a running trial
    # that has no heartbeat at all.
    for i in ids:
        storage.record_heartbeat(i)

    def beat():
        while not stop.wait(interval):
            for i in ids:
                storage.record_heartbeat(i)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def scaled_lr(learning_rate: float, batch_size: int, *, base: int, rule: str) -> float:
    """``learning_rate`` (tuned at batch ``base``) at ``batch_size`` under ``rule``.

    ``linear``: times ``batch_size / base`` (Goyal et al., 2017); ``sqrt``: times its square root
    (Krizhevsky, 2014; Hoffer et al., 2017); ``none``: unchanged.
    """
    if rule == "linear":
        return learning_rate * batch_size / base
    if rule == "sqrt":
        return learning_rate * math.sqrt(batch_size / base)
    if rule == "none":
        return learning_rate
    raise ValueError(f"Unknown learning-rate scaling {rule!r}; accepted: {', '.join(LR_SCALING)}.")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value, last reported step, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append(
            {
                "name": f"trial_{t.number}",
                "state": t.state.name.lower(),
                "val_accuracy": t.value,
                "steps": steps[-1] if steps else 0,
                **t.params,
            }
        )
    return rows
