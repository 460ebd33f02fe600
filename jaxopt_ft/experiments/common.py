"""Config reading shared by every experiment: validation and builders.

Only experiments/ and cli.py read a ConfigDict; they turn it into the plain arguments that the
library modules take.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from jaxopt_ft import data, models, optim, parallel, train
from jaxopt_ft import tree as tree_lib

PARALLEL_MODES = parallel.MODES

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
    """The config's optimizer with its recipes (accumulation, clipping, decay rules, EMA, guard).

    ``steps`` counts micro-steps (batches); with ``optimizer.accumulate_steps=k`` the schedule
    runs over the ``ceil(steps / k)`` updates the optimizer actually makes.
    """
    opt = get(config, "optimizer")
    extra = {
        k: opt[k] for k in ("momentum", "b1", "b2", "eps", "decay", "weight_decay") if k in opt
    }
    k = get(config, "optimizer.accumulate_steps", 1)
    optim.accumulate(optax.identity(), every_k=k)  # rejects k < 1 before dividing by it
    rules = get(config, "optimizer.weight_decay_rules", None)
    return optim.make(
        get(config, "optimizer.name"),
        learning_rate=build_schedule(config, steps=-(-steps // k), learning_rate=learning_rate),
        weight_decay_rules=[tuple(r) for r in rules] if rules else None,
        clip_norm=get(config, "optimizer.clip_norm", 0.0),
        accumulate_steps=k,
        ema_decay=get(config, "train.ema_decay", 0.0),
        skip_nonfinite=True,
        **extra,
    )


def build_augment(config, ds_name: str, *, num_classes: int):
    """The config's ``augment.ops`` as one ``(key, batch) -> batch`` function, or None."""
    from jaxopt_ft.data import augment

    shape = data.input_shape(ds_name, data_dir=data_dir(config))
    spec = get(config, "augment.ops", "")
    try:
        return augment.build(spec, input_shape=shape, num_classes=num_classes)
    except (ValueError, TypeError) as e:
        raise type(e)(f"augment.ops={spec!r}: {e}") from None


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
    strategy(config)  # fsdp outside mode sharding, more devices than exist
    check_batch(config, batch_size, "train.batch_size")
    accumulate = get(config, "optimizer.accumulate_steps", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(
            f"optimizer.accumulate_steps must be an integer >= 1 (1 = no accumulation), got "
            f"{accumulate!r}."
        )
    if steps % accumulate:
        raise ValueError(
            f"train.steps={steps} is not a multiple of optimizer.accumulate_steps={accumulate} "
            "(train.steps counts micro-batches); make it one."
        )
    clip = get(config, "optimizer.clip_norm", 0.0)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
        raise ValueError(
            f"optimizer.clip_norm must be a number >= 0 (0 = no clipping), got {clip!r}."
        )
    ema = get(config, "train.ema_decay", 0.0)
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
        raise ValueError(f"train.ema_decay must be in [0, 1) (0 = no EMA), got {ema!r}.")
    policy = get(config, "train.nan_policy", "skip")
    if policy not in train.NAN_POLICIES:
        raise ValueError(
            f"train.nan_policy={policy!r} is not accepted; choose one of: "
            f"{', '.join(train.NAN_POLICIES)}."
        )
    limit = get(config, "train.max_consecutive_nonfinite", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"train.max_consecutive_nonfinite must be an integer >= 1, got {limit!r}.")
    build_optimizer(config, steps=steps)  # validates the remaining optimizer/schedule values
    # Unknown model kwargs and unavailable datasets fail here, before any work.
    build_model(config, num_classes=data.num_classes(name, data_dir=data_dir(config)))
    build_augment(config, name, num_classes=data.num_classes(name, data_dir=data_dir(config)))
    n_train = len(load_split(config, "train").label)
    if batch_size > n_train:
        raise ValueError(
            f"train.batch_size={batch_size} exceeds the {n_train} training examples of "
            f"{name!r}; use a smaller batch size."
        )


def strategy(config) -> parallel.Strategy:
    """The data-parallel strategy of ``parallel.mode`` / ``parallel.fsdp`` / ``parallel.devices``.

    The same settings give the same strategy object, so repeated fits share compiled steps.
    """
    mode = check_choice(config, "parallel.mode", PARALLEL_MODES)
    fsdp = get(config, "parallel.fsdp", False)
    if not isinstance(fsdp, bool):
        raise ValueError(f"parallel.fsdp must be True or False, got {fsdp!r}.")
    devices = get(config, "parallel.devices", 0)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0:
        raise ValueError(
            f"parallel.devices must be an integer >= 0 (0 = every device), got {devices!r}."
        )
    if fsdp and mode != "sharding":
        raise ValueError(
            f"parallel.fsdp=True needs parallel.mode='sharding', but parallel.mode={mode!r}. "
            "Fix: set parallel.mode='sharding' or parallel.fsdp=False."
        )
    if mode == "none" and devices > 1:
        raise ValueError(
            f"parallel.devices={devices} needs a data-parallel mode, but parallel.mode='none'. "
            "Fix: set parallel.mode='sharding' or 'pmap'."
        )
    return _strategy(mode, fsdp, devices or None)


@functools.cache
def _strategy(mode: str, fsdp: bool, devices: int | None) -> parallel.Strategy:
    return parallel.make(mode, devices=devices, fsdp=fsdp)


def check_batch(config, batch_size: int, key: str) -> None:
    """Raises ValueError naming ``key`` unless ``batch_size`` divides by the device count."""
    try:
        parallel.check_batch(batch_size, strategy(config))
    except ValueError as e:
        raise ValueError(f"{key}={batch_size}: {e}") from None


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
        **{**fit_options(config), **kw},
    )


def fit_options(config) -> dict[str, Any]:
    """`train.fit` keyword arguments for the NaN/Inf policy and the data-parallel strategy."""
    return {
        "nan_policy": get(config, "train.nan_policy", "skip"),
        "max_consecutive_nonfinite": get(config, "train.max_consecutive_nonfinite", 10),
        "strategy": strategy(config),
    }


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
        {
            "name": "adam",
            "learning_rate": 1e-2,
            "momentum": 0.9,
            "weight_decay": 1e-4,  # adamw only, on the leaves weight_decay_rules select
            "weight_decay_rules": (),  # () = kernels only; else ((regex, bool), ...)
            "clip_norm": 0.0,  # global-norm clipping; 0 = off
            "accumulate_steps": 1,  # micro-batches per update; train.steps counts micro-batches
        }
    )
    config.schedule = ml_collections.ConfigDict(
        {"name": "constant", "warmup_steps": 0, "decay_rate": 0.01}
    )
    config.train = ml_collections.ConfigDict(
        {
            "steps": 1000,
            "batch_size": 100,
            "log_every": 100,
            "label_smoothing": 0.0,
            "ema_decay": 0.0,  # parameter EMA used for evaluation; 0 = off
            "nan_policy": "stop",  # non-finite updates are skipped; "stop" ends long runs of them
            "max_consecutive_nonfinite": 10,
        }
    )
    # On-device augmentation, e.g. "crop(pad=1), rotate(degrees=10)"; see jaxopt_ft.data.augment.
    config.augment = ml_collections.ConfigDict({"ops": ""})
    config.eval = ml_collections.ConfigDict({"batch_size": 1000})
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "max_to_keep": 3})
    # Data parallelism: "none", "sharding" (jit over a device mesh) or "pmap"; fsdp shards params
    # and optimizer state (mode sharding); devices = how many (0 = all). The global batch
    # (train.batch_size) must divide by the device count.
    config.parallel = ml_collections.ConfigDict({"mode": "none", "fsdp": False, "devices": 0})
    return config
