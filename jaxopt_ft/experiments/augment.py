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

from jaxopt_ft import data, optim
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import AugmentSettings as Settings

ARMS = ("no_augment", "augment")


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    small = data.subset(train_ds, fraction=s.subset.fraction, seed=0)
    if s.train.batch_size > len(small.label):
        raise ValueError(
            f"train.batch_size={s.train.batch_size} exceeds the {len(small.label)} examples of "
            f"the subset (subset.fraction={s.subset.fraction}); lower it."
        )


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    full = common.load_split(s, "train")
    test_ds = common.load_split(s, "test")
    model = common.build_model(s, num_classes=full.num_classes)
    steps_by_arm = {
        "no_augment": common.classification_step(s),
        "augment": common.classification_step(
            s, augment=common.build_augment(s, full.name, num_classes=full.num_classes)
        ),
    }
    # One optimizer object and one step function per arm: every seed reuses the compiled step.
    tx = common.build_optimizer(s, steps=s.train.steps)
    acc = {arm: {} for arm in ARMS}
    wall = dict.fromkeys(ARMS, 0.0)
    n_train = 0
    for seed in s.augment.seeds:
        ds = data.subset(full, fraction=s.subset.fraction, seed=seed)
        n_train = len(ds.label)
        k_init, k_train = jax.random.split(jax.random.PRNGKey(seed))
        for arm in ARMS:
            t = common.Timer()
            state = common.new_state(model, k_init, ds.x[:1], tx)
            state, _ = common.fit_phase(
                s, state, steps_by_arm[arm],
                common.train_batches(s, ds, batch_size=s.train.batch_size, seed=seed),
                workdir=workdir, phase=f"{arm}_seed{seed}", steps=s.train.steps,
                key=k_train, progress=progress,
            )  # fmt: skip
            params = optim.ema_params(state.opt_state) if s.train.ema_decay else state.params
            metrics = common.evaluate(s, state.apply_fn, state.variables(params), test_ds)
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
                **{f"test_accuracy_seed{seed}": v for seed, v in acc[arm].items()},
                "train_examples": n_train,
                "steps": s.train.steps,
                "wall_s": wall[arm],
            }
        )
    diffs = [acc["augment"][seed] - acc["no_augment"][seed] for seed in acc["augment"]]
    return common.report(
        s,
        rows,
        augment_ops=s.augment.ops,
        subset_fraction=s.subset.fraction,
        paired_difference={
            "mean": statistics.fmean(diffs),
            "std": statistics.stdev(diffs),
            "improved": sum(d > 0 for d in diffs),
            "seeds": len(diffs),
        },
        wall_s=timer(),
    )
