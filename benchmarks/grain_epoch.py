"""An epoch of batches fed to a jitted step: the grain pipeline vs a plain in-memory generator.

    python benchmarks/grain_epoch.py [--epochs 5] [--repeats 5] [--batch-size 100]

Both feed the same compiled train step (the CNN of configs/mnist1d_cnn.py on MNIST-1D) with
the same batches: the baseline is the generator the loader had before grain (an epoch's
permutation, then numpy fancy indexing in the consuming thread); the pipeline is
`data.train_batches` (grain, one reading thread, prefetch 4). Rounds alternate so machine
noise hits both alike. Prints ms per epoch for each and the ratio grain / in-memory
(target <= 1.1), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from jaxopt_ft import data, models, optim, timing, train


def inmemory_batches(ds: data.Dataset, batch_size: int, seed: int):
    """The pre-grain loader: per-epoch permutation, fancy indexing, no prefetch."""
    epoch = 0
    while True:
        rows = np.random.default_rng([seed, epoch]).permutation(len(ds.label))
        for i in range(len(ds.label) // batch_size):
            batch = rows[i * batch_size : (i + 1) * batch_size]
            yield {"x": ds.x[batch], "label": ds.label[batch]}
        epoch += 1


def ms_per_epoch(step, state, batches, steps_per_epoch: int, epochs: int) -> float:
    key = jax.random.PRNGKey(0)
    state, metrics = step(state, next(batches), key)  # compiled already; warms the iterator
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(epochs * steps_per_epoch):
        state, metrics = step(state, next(batches), key)
    jax.block_until_ready(metrics)
    return 1000.0 * (time.perf_counter() - t0) / epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    ds = data.load("mnist1d", "train")
    model = models.get("cnn", num_classes=ds.num_classes)
    params, stats = train.init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    tx = optim.make("adam", learning_rate=1e-3)
    step = jax.jit(train.make_train_step())
    spe = len(ds.label) // args.batch_size

    def fresh():
        p = jax.tree.map(lambda x: x.copy(), params)
        return train.TrainState.create(apply_fn=model.apply, params=p, tx=tx, batch_stats=stats)

    first = data.batch_at(ds, batch_size=args.batch_size, seed=0, step=0)
    jax.block_until_ready(step(fresh(), first, jax.random.PRNGKey(0)))

    def grain_run():
        it = data.train_batches(ds, batch_size=args.batch_size, seed=0)
        return ms_per_epoch(step, fresh(), it, spe, args.epochs)

    def inmemory_run():
        it = inmemory_batches(ds, args.batch_size, 0)
        return ms_per_epoch(step, fresh(), it, spe, args.epochs)

    runs = timing.interleave({"inmemory": inmemory_run, "grain": grain_run}, rounds=args.repeats)
    base, new = statistics.median(runs["inmemory"]), statistics.median(runs["grain"])
    ratio = new / base
    for name, med in (("in-memory", base), ("grain", new)):
        key = "inmemory" if name == "in-memory" else "grain"
        print(f"{name:9s}: {med:.2f} ms/epoch  (runs: {', '.join(f'{v:.2f}' for v in runs[key])})")
    print(f"{spe} steps of batch {args.batch_size} per epoch")
    print(f"time per epoch, grain / in-memory: {ratio:.3f}  (target <= 1.1)")
    print(
        json.dumps(
            {
                "name": "grain_epoch_vs_inmemory",
                "value": round(new, 4),
                "baseline": round(base, 4),
                "ratio": round(ratio, 4),
                "target": 1.1,
                "unit": "ms/epoch",
            }
        )
    )


if __name__ == "__main__":
    main()
