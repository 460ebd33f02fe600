"""Experiment ``train``: train one model on one dataset and report its test metrics."""

from __future__ import annotations

import jax

from jaxopt_ft import train
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
        label_smoothing=common.get(config, "train.label_smoothing", 0.0)
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
    row = {
        "name": "dense",
        **metrics,
        **common.size_row(state.params),
        "train_steps_per_s": summary.get("train_steps_per_s"),
        "final_train_loss": summary.get("final_train_loss"),
        "wall_s": timer(),
    }
    return {
        "experiment": "train",
        "dataset": name,
        "model": common.get(config, "model.name"),
        "rows": [row],
    }
