"""What freezing saves: a frozen-trunk step against a full step, a cached-features epoch
against a full epoch.

Setup: the MNIST-1D CNN at 64 channels (28,298 params; the convolutions dominate), batch 100,
AdamW, jitted steps with the state donated. Timings interleave the variants and report medians
over repeats.

- ``partial_step_vs_full``: `train.make_train_step(trainable=...)` with every conv frozen (the
  trunk runs forward only: `jax.grad` sees only the head) against `train.make_train_step` training
  everything. Target <= 0.7. Also printed, for reference: only ``conv1`` frozen, and the common
  recipe (`multi_transform` + `set_to_zero` over the full gradient) with and without a
  global-norm clip, which reads every gradient and so keeps XLA from dropping the frozen ones.
- ``features_epoch_vs_full``: one epoch of head training on cached trunk features (one
  whole-cache step over the 4,000 training rows, as the ``features`` mode of the ``transfer``
  experiment trains) against one full epoch (40 full steps of 100 from a Python loop over
  batches already on device, the fastest way to run them). Target <= 0.1. Also printed: the
  same epoch as 40 minibatch steps of 100 scanned in one compiled call, and the one-time
  feature extraction.

    python benchmarks/finetune_speed.py [--repeats 15] [--steps 40]

Prints ratios, then one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import data, finetune, models, timing, train
from jaxopt_ft.finetune import features

MODEL = models.get("cnn", channels=(64, 64, 64), num_classes=10)
BATCH = 100


def _adamw():
    return optax.adamw(1e-3, weight_decay=1e-4)


def _params():
    return train.init_model(MODEL, jax.random.PRNGKey(0), jnp.zeros((1, 40)))[0]


def _runner(kind: str, batches: list):
    """Returns ``run()``: one training step (cycling over ``batches``) and its outputs."""
    params = _params()
    if kind == "full":
        tx, step = _adamw(), train.make_train_step()
    else:
        rules = {
            "frozen_trunk": finetune.mode_rules("linear_probe"),
            "frozen_conv1": finetune.mode_rules("partial", partial_frozen=["conv1/.*"]),
            "set_to_zero": finetune.mode_rules("linear_probe"),
            "set_to_zero_clip": finetune.mode_rules("linear_probe"),
        }[kind]
        labels = finetune.freeze_labels(params, rules)
        used = set(jax.tree.leaves(labels)) - {finetune.FROZEN}
        tx = finetune.optimizer(labels, {g: _adamw() for g in used})
        if kind == "set_to_zero_clip":
            tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
        if kind.startswith("set_to_zero"):
            step = train.make_train_step()  # the full gradient, zeroed afterwards
        else:
            step = train.make_train_step(trainable=finetune.trainable_mask(labels))
    state = train.TrainState.create(apply_fn=MODEL.apply, params=params, tx=tx)
    step = jax.jit(step, donate_argnums=0)
    holder = {"state": state, "i": 0}

    def run():
        i = holder["i"]
        holder["state"], metrics = step(
            holder["state"], batches[i % len(batches)], jax.random.PRNGKey(i)
        )
        holder["i"] = i + 1
        return holder["state"], metrics

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40, help="steps per timed run")
    args = parser.parse_args()

    ds = data.load("mnist1d", "train")
    batches = [
        jax.device_put(data.batch_at(ds, batch_size=BATCH, seed=0, step=i))
        for i in range(len(ds.label) // BATCH)
    ]
    kinds = ("full", "frozen_trunk", "frozen_conv1", "set_to_zero", "set_to_zero_clip")
    runs = {k: _runner(k, batches) for k in kinds}
    step_ms = timing.time_side_by_side(runs, repeats=args.repeats, number=args.steps, warmup=2)

    # Epochs: a full epoch is len(batches) full steps; a features epoch trains the head on the
    # cached features with the same minibatches, in one compiled call.
    epoch_steps = len(batches)
    full_step = _runner("full", batches)
    variables = {"params": _params()}
    extract = lambda: features.extract(MODEL.apply, variables, ds.x)  # noqa: E731
    feats = jax.block_until_ready(extract())
    tx = _adamw()
    head = features.init_head(feats.shape[1], 10)
    labels = jnp.asarray(ds.label)
    n = len(ds.label)
    trainers = {
        "features": features.head_trainer(tx, steps=1, num_examples=n),
        "features_minibatch": features.head_trainer(
            tx, steps=epoch_steps, num_examples=n, batch_size=BATCH
        ),
    }

    def head_runner(trainer):
        hold = {"head": head, "opt": tx.init(head)}

        def run():
            h, s, _ = trainer(hold["head"], hold["opt"], feats, labels, jax.random.PRNGKey(0))
            hold["head"], hold["opt"] = h, s
            return h

        return run

    def full_epoch():
        for _ in range(epoch_steps):
            out = full_step()
        return out

    epoch_runs = {"full": full_epoch, "extract": extract}
    epoch_runs.update({k: head_runner(t) for k, t in trainers.items()})
    epoch_ms = timing.time_side_by_side(epoch_runs, repeats=args.repeats)

    base = step_ms["full"]
    print(f"64-channel CNN, batch {BATCH}: full step {base:.3f} ms")
    for k in kinds[1:]:
        print(f"  {k:17s} {step_ms[k]:.3f} ms  ({step_ms[k] / base:.2f}x full)")
    full = epoch_ms["full"]
    print(f"epoch of {n} rows: full (40 steps of {BATCH}) {full:.1f} ms")
    for k, what in (
        ("features", "head on cached features, one whole-cache step"),
        ("features_minibatch", f"head on cached features, 40 scanned steps of {BATCH}"),
        ("extract", "one-time feature extraction"),
    ):
        print(f"  {what}: {epoch_ms[k]:.2f} ms ({epoch_ms[k] / full:.3f}x)")
    figures = [
        ("partial_step_vs_full", step_ms["frozen_trunk"], base, 0.7),
        ("features_epoch_vs_full", epoch_ms["features"], epoch_ms["full"], 0.1),
    ]
    for name, value, baseline, target in figures:
        record = {
            "name": name,
            "value": round(value, 4),
            "baseline": round(baseline, 4),
            "ratio": round(value / baseline, 4),
            "target": target,
            "unit": "ms",
        }
        print(json.dumps(record))


if __name__ == "__main__":
    main()
