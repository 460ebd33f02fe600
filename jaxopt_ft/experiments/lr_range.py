"""Experiment ``lr_range``: the learning-rate range test of ``optimizer.name`` on the model.

The learning rate grows exponentially from ``lr_range.min_lr`` to ``lr_range.max_lr`` over
``lr_range.steps`` steps (stopping once the smoothed loss passes ``lr_range.diverge`` times its
minimum); `jaxopt_ft.lr_range` documents the smoothing and the two suggestions. One row with
``suggested_lr`` (the minimum / 10), ``steepest_lr``, ``min_loss_lr``, ``steps`` and
``stopped_early``, and lr_range.png. ``optimizer.learning_rate`` and ``schedule`` are unused.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxopt_ft import data, lr_range, optim, train
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import LrRangeSettings as Settings


def validate(s: Settings) -> None:
    common.validate_common(s)
    r = s.lr_range
    lr_range.check(min_lr=r.min_lr, max_lr=r.max_lr, steps=r.steps, beta=r.beta, diverge=r.diverge)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    del progress
    timer = common.Timer()
    r = s.lr_range
    train_ds = common.load_split(s, "train")
    model = common.build_model(s, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(s))
    # No skipping of non-finite updates: the test must see the loss blow up.
    plain = dataclasses.replace(s, train=dataclasses.replace(s.train, ema_decay=0.0))

    def make_state(schedule):
        o = plain.optimizer
        tx = optim.make(
            o.name, learning_rate=schedule, momentum=o.momentum, b1=o.b1, b2=o.b2, eps=o.eps,
            decay=o.decay, weight_decay=o.weight_decay, clip_norm=o.clip_norm,
        )  # fmt: skip
        return common.new_state(model, k_init, train_ds.x[:1], tx)

    batches = data.train_batches(train_ds, batch_size=s.train.batch_size, seed=s.seed)
    result = lr_range.run(
        make_state,
        train.make_train_step(train.classification_loss(label_smoothing=s.train.label_smoothing)),
        batches,
        key=k_train,
        min_lr=r.min_lr,
        max_lr=r.max_lr,
        steps=r.steps,
        beta=r.beta,
        diverge=r.diverge,
    )
    row = {
        "name": f"{s.optimizer.name}",
        "suggested_lr": result.suggestion,
        "steepest_lr": result.steepest,
        "min_loss_lr": result.min_div10 * 10,
        "steps": len(result.lrs),
        "stopped_early": result.stopped_early,
        "wall_s": timer(),
    }
    return common.report(s, [row], plots=[lr_range.plot(result, workdir)])
