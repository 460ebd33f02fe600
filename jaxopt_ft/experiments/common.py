"""What every experiment shares: builders from the typed settings and the one phase helper.

Experiments receive their settings once (`jaxopt_ft.experiments.parse`); the functions here
turn sections of them into the plain arguments the library takes (a model, an optimizer, a
strategy, batches), and :func:`fit_phase` trains every phase of every experiment the same way:
checkpoints, logging, the NaN/Inf policy and the data-parallel strategy all come from the
settings.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from jaxopt_ft import data, loop, models, optim, parallel, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import settings as settings_lib

Common = settings_lib.Common
PyTree = Any


def strategy(s: Common) -> parallel.Strategy:
    """The data-parallel strategy of ``s.parallel`` (the same object for the same settings)."""
    p = s.parallel
    return parallel.make(p.mode, devices=p.devices or None, fsdp=p.fsdp)


def build_model(s: Common, *, num_classes: int, **overrides: Any):
    """The model of ``s.model`` with ``num_classes`` outputs (``overrides`` replace options)."""
    return models.get(s.model.name, num_classes=num_classes, **{**s.model.options, **overrides})


def build_optimizer(
    s: Common,
    *,
    steps: int,
    learning_rate: float | None = None,
    schedule: str | None = None,
) -> optax.GradientTransformation:
    """The settings' optimizer with its recipes (accumulation, clipping, decay, EMA, guard).

    Args:
      s: the settings (``optimizer``, ``schedule`` and ``train.ema_decay``).
      steps: micro-steps (batches) of the phase; with ``optimizer.accumulate_steps=k`` the
        schedule runs over the ``ceil(steps / k)`` updates the optimizer makes.
      learning_rate: a phase's own peak rate instead of ``optimizer.learning_rate``.
      schedule: a phase's own schedule name instead of ``schedule.name``.
    """
    o = s.optimizer
    k = o.accumulate_steps
    lr = learning_rates(s, steps=steps, learning_rate=learning_rate, schedule=schedule)
    return optim.make(
        o.name,
        learning_rate=lr,
        momentum=o.momentum,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        decay=o.decay,
        weight_decay=o.weight_decay,
        weight_decay_rules=o.weight_decay_rules or None,
        clip_norm=o.clip_norm,
        accumulate_steps=k,
        ema_decay=s.train.ema_decay,
        skip_nonfinite=True,
    )


def learning_rates(
    s: Common, *, steps: int, learning_rate: float | None = None, schedule: str | None = None
) -> optax.Schedule:
    """The schedule (``update count -> rate``) `build_optimizer` builds from the same args."""
    o, sch = s.optimizer, s.schedule
    return optim.schedule(
        schedule or sch.name,
        learning_rate=o.learning_rate if learning_rate is None else learning_rate,
        steps=-(-steps // o.accumulate_steps),
        warmup_steps=sch.warmup_steps,
        decay_rate=sch.decay_rate,
        boundaries=sch.boundaries,
        scale=sch.scale,
        end_value=sch.end_value,
    )


def build_augment(s: Common, ds_name: str, *, num_classes: int):
    """``augment.ops`` as one ``(key, batch) -> batch`` function, or None."""
    from jaxopt_ft.data import augment

    shape = data.input_shape(ds_name, data_dir=s.dataset.data_dir or None)
    try:
        return augment.build(s.augment.ops, input_shape=shape, num_classes=num_classes)
    except (ValueError, TypeError) as e:
        raise type(e)(f"augment.ops={s.augment.ops!r}: {e}") from None


def load_split(s: Common, split: str, *, stream: bool = False) -> data.Dataset | data.Records:
    """The split in memory, or with ``stream`` from disk when over ``dataset.in_memory_mb``.

    Raises:
      ValueError: the split is larger than ``dataset.in_memory_mb`` and the experiment needs
        it in memory (no ``stream``).
    """
    d = s.dataset
    ds = data.split_source(d.name, split, data_dir=d.data_dir or None, in_memory_mb=d.in_memory_mb)
    if isinstance(ds, data.Records) and not stream:
        raise ValueError(
            f"dataset.in_memory_mb={d.in_memory_mb:g} is below the size of {d.name!r} {split!r}, "
            f"and experiment {s.experiment!r} holds its splits in memory; raise "
            "dataset.in_memory_mb, or use experiment 'train', which reads such splits from disk."
        )
    return ds


def train_batches(
    s: Common, ds: data.Dataset | data.Records, *, batch_size: int, seed: int
) -> Callable[[int], Iterator]:
    """``start_step -> iterator`` over ``ds`` in the resume-exact order of ``seed``.

    The pipeline reads with ``dataset.threads`` threads and ``dataset.workers`` worker
    processes, each process reads only its share of every batch (``jax.process_index()`` of
    ``jax.process_count()``), and batches are put on the devices ahead of the step, in the
    layout of the settings' strategy.
    """
    options = dict(
        threads=s.dataset.threads,
        workers=s.dataset.workers,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        place=functools.partial(strategy(s).shard_batch, local=True),
    )
    return lambda start: data.train_batches(
        ds, batch_size=batch_size, seed=seed, start_step=start, **options
    )


def sample_x(ds: data.Dataset | data.Records):
    """One example row (a model's init input)."""
    return data.source(ds).read(np.arange(1))["x"]


def evaluate(
    s: Common, apply_fn: Callable, variables: PyTree, ds: data.Dataset | data.Records
) -> dict:
    """``test_loss`` and ``test_accuracy`` of a model over the whole of ``ds``."""
    return train.evaluate(apply_fn, variables, data.eval_batches(ds, batch_size=s.eval.batch_size))


def new_state(model, key: jax.Array, sample_x, tx) -> train.TrainState:
    """A fresh `train.TrainState` of a linen ``model`` initialised on ``sample_x``."""
    params, batch_stats = train.init_model(model, key, sample_x)
    return train.TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats
    )


def fit_phase(
    s: Common,
    state: Any,
    train_step: train.StepFn,
    batches: Callable[[int], Iterator],
    *,
    workdir: str | None,
    phase: str,
    steps: int,
    key: jax.Array,
    progress: bool,
    learning_rate: optax.Schedule | None = None,
) -> tuple[Any, dict]:
    """`loop.fit` with the settings' checkpoint cadence, logging, NaN policy and strategy.

    Every training phase of every experiment goes through here, so they behave alike.
    ``learning_rate`` (`learning_rates` of the phase's optimizer) is logged when given.
    """
    return loop.fit(
        state,
        train_step,
        batches,
        steps=steps,
        key=key,
        workdir=workdir,
        phase=phase,
        checkpoint_every=s.checkpoint.every_steps,
        max_to_keep=s.checkpoint.max_to_keep,
        log_every=s.train.log_every,
        progress=progress,
        nan_policy=s.train.nan_policy,
        max_consecutive_nonfinite=s.train.max_consecutive_nonfinite,
        strategy=strategy(s),
        learning_rate=learning_rate,
    )


def classification_step(s: Common, *, augment=None, apply_fn=None) -> train.StepFn:
    """`train.make_train_step` with the settings' label smoothing and the strategy's axis."""
    return train.make_train_step(
        train.classification_loss(label_smoothing=s.train.label_smoothing),
        augment=augment,
        apply_fn=apply_fn,
        axis_name=strategy(s).axis_name,
    )


def check_batch(s: Common, batch_size: int, key: str) -> None:
    """Raises ValueError naming ``key`` unless ``batch_size`` divides by the device count."""
    try:
        parallel.check_batch(batch_size, strategy(s))
    except ValueError as e:
        raise ValueError(f"{key}={batch_size}: {e}") from None


def validate_common(s: Common, *, stream: bool = False) -> data.Dataset | data.Records:
    """Checks what needs the data and the library (before any work); returns the train split
    (with ``stream``, read from disk when larger than ``dataset.in_memory_mb``).

    Raises:
      ValueError: an unavailable dataset or device count, a model option the model does not
        take, an optimizer or schedule value the library rejects, a bad augmentation, a batch
        larger than the training split or one that does not divide by the devices.
    """
    strategy(s)  # more devices than exist
    check_batch(s, s.train.batch_size, "train.batch_size")
    build_optimizer(s, steps=s.train.steps)  # schedule values against the step count
    num_classes = data.num_classes(s.dataset.name, data_dir=s.dataset.data_dir or None)
    build_model(s, num_classes=num_classes)
    build_augment(s, s.dataset.name, num_classes=num_classes)
    train_ds = load_split(s, "train", stream=stream)
    n = len(data.source(train_ds))
    if s.train.batch_size > n:
        procs = jax.process_count()
        share = f" ({n // procs} per process of {procs})" if procs > 1 else ""
        raise ValueError(
            f"train.batch_size={s.train.batch_size} exceeds the {n} training examples{share} "
            f"of {s.dataset.name!r}; use train.batch_size <= {n}."
        )
    return train_ds


def size_row(params: PyTree) -> dict[str, int]:
    return {"params": tree_lib.count_params(params), "size_bytes": tree_lib.tree_bytes(params)}


def seed_key(s: Common) -> jax.Array:
    return jax.random.PRNGKey(s.seed)


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def report(s: Common, rows: list[dict], **extra: Any) -> dict:
    """The uniform report dict of an experiment."""
    return {
        "experiment": s.experiment,
        "dataset": s.dataset.name,
        "model": s.model.name,
        "rows": rows,
        **extra,
    }
