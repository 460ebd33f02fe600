"""Config reading shared by every experiment: validation and builders.

Only experiments/ and cli.py read a ConfigDict; they turn it into the plain arguments that the
library modules take.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from jaxopt_ft import data, models, optim, train
from jaxopt_ft import tree as tree_lib

PARALLEL_MODES = ("none",)

_MISSING = object()


def get(config: ml_collections.ConfigDict, dotted: str, default: Any = _MISSING) -> Any:
    """Reads ``a.b.c`` from ``config``; a missing key without default is a ValueError."""
    node = config
    for part in dotted.split("."):
        if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
            node = node[part]
        elif default is not _MISSING:
            return default
        else:
            raise ValueError(f"The config has no key {dotted!r}; add it to the config file.")
    return node


def check_int(config, dotted: str, *, minimum: int) -> int:
    value = get(config, dotted)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{dotted} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_float(config, dotted: str, *, low: float, high: float, closed_low: bool = False):
    value = get(config, dotted)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{dotted} must be a number, got {value!r}.")
    ok = (low <= value if closed_low else low < value) and value <= high
    if not ok:
        lo = "[" if closed_low else "("
        raise ValueError(f"{dotted} must be in {lo}{low}, {high}], got {value!r}.")
    return float(value)


def check_choice(config, dotted: str, choices) -> str:
    value = get(config, dotted)
    if value not in choices:
        raise ValueError(
            f"{dotted}={value!r} is not accepted; choose one of: {', '.join(choices)}."
        )
    return value


def data_dir(config) -> str | None:
    return get(config, "dataset.data_dir", "") or None


def model_kwargs(config) -> dict[str, Any]:
    """The ``model`` section minus ``name``: keyword arguments for ``models.get``."""
    kw = dict(get(config, "model").to_dict()) if hasattr(get(config, "model"), "to_dict") else {}
    kw.pop("name", None)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def build_model(config, *, num_classes: int, **overrides):
    kwargs = {**model_kwargs(config), **overrides}
    return models.get(get(config, "model.name"), num_classes=num_classes, **kwargs)


def build_schedule(config, *, steps: int, learning_rate: float | None = None) -> optax.Schedule:
    lr = get(config, "optimizer.learning_rate") if learning_rate is None else learning_rate
    return optim.schedule(
        get(config, "schedule.name"),
        learning_rate=lr,
        steps=steps,
        warmup_steps=get(config, "schedule.warmup_steps", 0),
        decay_rate=get(config, "schedule.decay_rate", 0.01),
        boundaries=tuple(get(config, "schedule.boundaries", (0.5, 0.75))),
        scale=get(config, "schedule.scale", 0.1),
        end_value=get(config, "schedule.end_value", 0.0),
    )


def build_optimizer(
    config, *, steps: int, learning_rate: float | None = None
) -> optax.GradientTransformation:
    opt = get(config, "optimizer")
    extra = {
        k: opt[k] for k in ("momentum", "b1", "b2", "eps", "decay", "weight_decay") if k in opt
    }
    return optim.make(
        get(config, "optimizer.name"),
        learning_rate=build_schedule(config, steps=steps, learning_rate=learning_rate),
        **extra,
    )


def validate_common(config) -> None:
    """Checks the keys every experiment shares; raises ValueError naming the bad value."""
    check_int(config, "seed", minimum=0)
    name = get(config, "dataset.name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset.name must be a dataset name, got {name!r}.")
    check_choice(config, "model.name", models.NAMES)
    check_choice(config, "optimizer.name", optim.OPTIMIZERS)
    check_float(config, "optimizer.learning_rate", low=0.0, high=100.0)
    check_choice(config, "schedule.name", optim.SCHEDULES)
    steps = check_int(config, "train.steps", minimum=1)
    batch_size = check_int(config, "train.batch_size", minimum=1)
    check_int(config, "checkpoint.every_steps", minimum=0)
    check_int(config, "train.log_every", minimum=1)
    smoothing = get(config, "train.label_smoothing", 0.0)
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, (int, float))
        or not (0.0 <= smoothing < 1.0)
    ):
        raise ValueError(f"train.label_smoothing must be in [0, 1), got {smoothing!r}.")
    check_choice(config, "parallel.mode", PARALLEL_MODES)
    build_optimizer(config, steps=steps)  # validates the remaining optimizer/schedule values
    # Unknown model kwargs and unavailable datasets fail here, before any work.
    build_model(config, num_classes=data.num_classes(name, data_dir=data_dir(config)))
    n_train = len(load_split(config, "train").label)
    if batch_size > n_train:
        raise ValueError(
            f"train.batch_size={batch_size} exceeds the {n_train} training examples of "
            f"{name!r}; use a smaller batch size."
        )


def load_split(config, split: str) -> data.Dataset:
    return data.load(get(config, "dataset.name"), split, data_dir=data_dir(config))


def train_batches(ds: data.Dataset, *, batch_size: int, seed: int) -> Callable:
    return lambda start: data.train_batches(ds, batch_size=batch_size, seed=seed, start_step=start)


def eval_batches(config, ds: data.Dataset):
    return data.eval_batches(ds, batch_size=get(config, "eval.batch_size", 1000))


def evaluate(config, state: train.TrainState, ds: data.Dataset, **kw) -> dict[str, float]:
    return train.evaluate(state, eval_batches(config, ds), **kw)


def fit(config, state, train_step, ds, *, workdir, phase, steps, key, progress, **kw):
    """`train.fit` with the config's batch size, seed, checkpoint cadence and logging."""
    return train.fit(
        state,
        train_step,
        train_batches(ds, batch_size=get(config, "train.batch_size"), seed=get(config, "seed")),
        steps=steps,
        key=key,
        workdir=workdir,
        phase=phase,
        checkpoint_every=get(config, "checkpoint.every_steps"),
        max_to_keep=get(config, "checkpoint.max_to_keep", 3),
        log_every=get(config, "train.log_every", 100),
        progress=progress,
        **kw,
    )


def size_row(params) -> dict[str, int]:
    return {
        "params": tree_lib.count_params(params),
        "size_bytes": tree_lib.tree_bytes(params),
    }


def seed_key(config) -> jax.Array:
    return jax.random.PRNGKey(get(config, "seed"))


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def workdir_path(workdir: str, *parts: str) -> str:
    return os.path.join(workdir, *parts)


def base_config() -> ml_collections.ConfigDict:
    """The keys every experiment shares, with defaults; config files start from this."""
    config = ml_collections.ConfigDict()
    config.experiment = "train"
    config.seed = 0
    config.dataset = ml_collections.ConfigDict({"name": "mnist1d", "data_dir": ""})
    config.model = ml_collections.ConfigDict({"name": "cnn"})
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adam", "learning_rate": 1e-2, "momentum": 0.9, "weight_decay": 1e-4}
    )
    config.schedule = ml_collections.ConfigDict(
        {"name": "constant", "warmup_steps": 0, "decay_rate": 0.01}
    )
    config.train = ml_collections.ConfigDict(
        {"steps": 1000, "batch_size": 100, "log_every": 100, "label_smoothing": 0.0}
    )
    config.eval = ml_collections.ConfigDict({"batch_size": 1000})
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "max_to_keep": 3})
    config.parallel = ml_collections.ConfigDict({"mode": "none"})
    return config
