"""Train-step time with on-device augmentation vs without: LeNet-5 on 8x8 digits, batch 64.

    python benchmarks/augment.py [--steps 1000] [--repeats 5] [--ops "crop(pad=1)"]

Both loops are `loop.fit` over the same batches with the same optimizer; the augmented one
applies ``--ops`` (default: the ops of configs/digits_augment.py) inside the jitted step.
Rounds alternate so machine noise hits both alike. Prints ms/step for each and the ratio
augmented / plain (target <= 1.15), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax

from jaxopt_ft import data, loop, models, optim, timing, train
from jaxopt_ft.data import augment

DEFAULT_OPS = "crop(pad=1), rotate(degrees=10)"


def ms_per_step(step_fn, tx, model, params, ds, steps: int) -> float:
    state = train.TrainState.create(
        apply_fn=model.apply, params=jax.tree.map(lambda x: x.copy(), params), tx=tx
    )
    _, summary = loop.fit(
        state,
        step_fn,
        lambda s: data.train_batches(ds, batch_size=64, seed=0, start_step=s),
        steps=steps + 1,  # the first step (compilation) is excluded from the rate
        key=jax.random.PRNGKey(0),
        progress=False,
    )
    return 1000.0 / summary["train_steps_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", default=DEFAULT_OPS)
    args = parser.parse_args()
    ds = data.load("digits", "train")
    model = models.get("lenet5", num_classes=ds.num_classes)
    params, _ = train.init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.make("adam", learning_rate=1e-3, skip_nonfinite=True)
    aug = augment.build(args.ops, input_shape=ds.x.shape[1:], num_classes=ds.num_classes)
    plain_step = train.make_train_step()
    aug_step = train.make_train_step(augment=aug)
    runs = timing.interleave(
        {
            "plain": lambda: ms_per_step(plain_step, tx, model, params, ds, args.steps),
            "augmented": lambda: ms_per_step(aug_step, tx, model, params, ds, args.steps),
        },
        rounds=args.repeats,
    )
    plain, augmented = runs["plain"], runs["augmented"]
    p, a = statistics.median(plain), statistics.median(augmented)
    ratio = a / p
    print(f"plain:     {p:.3f} ms/step  (runs: {', '.join(f'{v:.3f}' for v in plain)})")
    print(f"augmented: {a:.3f} ms/step  (runs: {', '.join(f'{v:.3f}' for v in augmented)})")
    print(f"ops: {args.ops}")
    print(f"time per step, augmented / plain: {ratio:.3f}  (target <= 1.15)")
    print(
        json.dumps(
            {
                "name": "augment_step_vs_plain",
                "value": round(a, 4),
                "baseline": round(p, 4),
                "ratio": round(ratio, 4),
                "target": 1.15,
                "unit": "ms/step",
            }
        )
    )


if __name__ == "__main__":
    main()
