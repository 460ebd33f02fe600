"""Experiment ``train``: train one model on one dataset and report its test metrics.

The training recipes come from the settings: ``augment.ops`` (on-device augmentation),
``train.label_smoothing``, ``train.ema_decay`` (the row's test metrics then use the EMA
parameters; ``test_accuracy_no_ema`` has the raw ones), ``optimizer.clip_norm``,
``optimizer.accumulate_steps`` and ``train.nan_policy``.
"""

from __future__ import annotations

import jax

from jaxopt_ft import optim
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import TrainSettings as Settings


def validate(s: Settings) -> None:
    common.validate_common(s, stream=True)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    train_ds = common.load_split(s, "train", stream=True)
    test_ds = common.load_split(s, "test", stream=True)
    model = common.build_model(s, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(s))
    tx = common.build_optimizer(s, steps=s.train.steps)
    state = common.new_state(model, k_init, common.sample_x(train_ds), tx)
    augment = common.build_augment(s, s.dataset.name, num_classes=train_ds.num_classes)
    state, summary = common.fit_phase(
        s,
        state,
        common.classification_step(s, augment=augment),
        common.train_batches(s, train_ds, batch_size=s.train.batch_size, seed=s.seed),
        workdir=workdir,
        phase="train",
        steps=s.train.steps,
        key=k_train,
        progress=progress,
        learning_rate=common.learning_rates(s, steps=s.train.steps),
    )
    metrics = common.evaluate(s, state.apply_fn, state.variables(), test_ds)
    if s.train.ema_decay:
        raw = metrics
        ema = state.variables(optim.ema_params(state.opt_state))
        metrics = common.evaluate(s, state.apply_fn, ema, test_ds)
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
    return common.report(s, [row])
