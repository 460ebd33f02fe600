"""Experiment ``train``: train one model on one dataset and report its test metrics.

The training recipes come from the config: ``augment.ops`` (on-device augmentation),
``train.label_smoothing``, ``train.ema_decay`` (the row's test metrics then use the EMA
parameters; ``test_accuracy_no_ema`` has the raw ones), ``optimizer.clip_norm``,
``optimizer.accumulate_steps`` and ``train.nan_policy``.
"""

from __future__ import annotations

import jax

from jaxopt_ft import optim, train
from jaxopt_ft.experiments import common


def validate(config) -> None:
    common.validate_common(config)


def run(config, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    name = common.get(config, "dataset.name")
    train_ds = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    model = common.build_model(config, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(config))
    params, batch_stats = train.init_model(model, k_init, train_ds.x[:1])
    steps = common.get(config, "train.steps")
    tx = common.build_optimizer(config, steps=steps)
    state = train.TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats
    )
    step_fn = train.make_train_step(
        augment=common.build_augment(config, name, num_classes=train_ds.num_classes),
        label_smoothing=common.get(config, "train.label_smoothing", 0.0),
        axis_name=common.strategy(config).axis_name,
    )
    state, summary = common.fit(
        config,
        state,
        step_fn,
        train_ds,
        workdir=workdir,
        phase="train",
        steps=steps,
        key=k_train,
        progress=progress,
    )
    metrics = common.evaluate(config, state, test_ds)
    if common.get(config, "train.ema_decay", 0.0):
        raw = metrics
        metrics = common.evaluate(
            config, state.replace(params=optim.ema_params(state.opt_state)), test_ds
        )
        metrics["test_accuracy_no_ema"] = raw["test_accuracy"]
    row = {
        "name": "dense",
        **metrics,
        **common.size_row(state.params),
        "train_steps_per_s": summary.get("train_steps_per_s"),
        "final_train_loss": summary.get("final_train_loss"),
        "nonfinite_updates": summary.get("nonfinite_updates", 0),
        "wall_s": timer(),
    }
    return {
        "experiment": "train",
        "dataset": name,
        "model": common.get(config, "model.name"),
        "rows": [row],
    }
