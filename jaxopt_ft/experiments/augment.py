"""Experiment ``augment``: the same model on a small subset with and without augmentation.

For each seed in ``augment.seeds`` a stratified subset (``subset.fraction`` of the training
split, drawn with that seed) trains twice from the same initial parameters on the same
batches: once plain, once with ``augment.ops`` applied on device in the train step. The
comparison is paired, so the per-seed differences carry the effect without the (larger)
spread between subsets and initialisations.

Rows ``no_augment`` and ``augment``: ``test_accuracy`` (the mean over seeds),
``test_accuracy_std`` (sample standard deviation), ``test_accuracy_seed<s>`` per seed,
``train_examples``, ``steps``, ``wall_s``. The top-level ``paired_difference`` holds the mean
and standard deviation of (augment - no_augment) per seed and how many seeds improved.
"""

from __future__ import annotations

import statistics

import jax

from jaxopt_ft import data, optim, train
from jaxopt_ft.experiments import common

ARMS = ("no_augment", "augment")


def _seeds(config) -> tuple[int, ...]:
    seeds = tuple(common.get(config, "augment.seeds"))
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if len(seeds) < 2 or bad or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"augment.seeds={list(seeds)!r} must be at least two distinct integers >= 0 (the "
            "standard deviation needs two), e.g. (0, 1, 2, 3, 4)."
        )
    return seeds


def validate(config) -> None:
    common.validate_common(config)
    _seeds(config)
    common.check_float(config, "subset.fraction", low=0.0, high=1.0)
    if not common.get(config, "augment.ops"):
        raise ValueError(
            "augment.ops is empty: the 'augment' arm would equal 'no_augment'; set e.g. "
            "--config.augment.ops='crop(pad=1)'."
        )
    train_ds = common.load_split(config, "train")
    small = data.subset(train_ds, fraction=common.get(config, "subset.fraction"), seed=0)
    batch_size = common.get(config, "train.batch_size")
    if batch_size > len(small.label):
        raise ValueError(
            f"train.batch_size={batch_size} exceeds the {len(small.label)} examples of the "
            f"subset (subset.fraction={common.get(config, 'subset.fraction')}); lower it."
        )


def run(config, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    full = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    model = common.build_model(config, num_classes=full.num_classes)
    steps = common.get(config, "train.steps")
    fraction = common.get(config, "subset.fraction")
    smoothing = common.get(config, "train.label_smoothing", 0.0)
    axis_name = common.strategy(config).axis_name
    steps_by_arm = {
        "no_augment": train.make_train_step(label_smoothing=smoothing, axis_name=axis_name),
        "augment": train.make_train_step(
            augment=common.build_augment(config, full.name, num_classes=full.num_classes),
            label_smoothing=smoothing,
            axis_name=axis_name,
        ),
    }
    # One optimizer object and one step function per arm: every seed reuses the compiled step.
    tx = common.build_optimizer(config, steps=steps)
    acc = {arm: {} for arm in ARMS}
    wall = {arm: 0.0 for arm in ARMS}
    n_train = 0
    for seed in _seeds(config):
        ds = data.subset(full, fraction=fraction, seed=seed)
        n_train = len(ds.label)
        k_init, k_train = jax.random.split(jax.random.PRNGKey(seed))
        for arm in ARMS:
            t = common.Timer()
            params, batch_stats = train.init_model(model, k_init, ds.x[:1])
            state = train.TrainState.create(
                apply_fn=model.apply,
                params=params,
                tx=tx,
                batch_stats=batch_stats,
            )
            state, _ = train.fit(
                state,
                steps_by_arm[arm],
                common.train_batches(
                    ds, batch_size=common.get(config, "train.batch_size"), seed=seed
                ),
                steps=steps,
                key=k_train,
                workdir=workdir,
                phase=f"{arm}_seed{seed}",
                checkpoint_every=common.get(config, "checkpoint.every_steps"),
                max_to_keep=common.get(config, "checkpoint.max_to_keep", 3),
                log_every=common.get(config, "train.log_every", 100),
                progress=progress,
                **common.fit_options(config),
            )
            if common.get(config, "train.ema_decay", 0.0):
                state = state.replace(params=optim.ema_params(state.opt_state))
            metrics = common.evaluate(config, state, test_ds)
            acc[arm][seed] = metrics["test_accuracy"]
            wall[arm] += t()
    rows = []
    for arm in ARMS:
        values = list(acc[arm].values())
        rows.append(
            {
                "name": arm,
                "test_accuracy": statistics.fmean(values),
                "test_accuracy_std": statistics.stdev(values),
                **{f"test_accuracy_seed{s}": v for s, v in acc[arm].items()},
                "train_examples": n_train,
                "steps": steps,
                "wall_s": wall[arm],
            }
        )
    diffs = [acc["augment"][s] - acc["no_augment"][s] for s in acc["augment"]]
    return {
        "experiment": "augment",
        "dataset": full.name,
        "model": common.get(config, "model.name"),
        "rows": rows,
        "augment_ops": str(common.get(config, "augment.ops")),
        "subset_fraction": fraction,
        "paired_difference": {
            "mean": statistics.fmean(diffs),
            "std": statistics.stdev(diffs),
            "improved": sum(d > 0 for d in diffs),
            "seeds": len(diffs),
        },
        "wall_s": timer(),
    }
