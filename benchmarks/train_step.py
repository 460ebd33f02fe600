"""Our training loop vs a plain hand-written JAX step, side by side, MNIST-1D CNN, batch 100.

    python benchmarks/train_step.py [--steps 400] [--repeats 15]

Both loops draw the same batches from the same loader; ours goes through
`train.make_train_step` + `loop.fit` (TrainState, donated state, per-step keys, metrics,
progress bookkeeping). Rounds alternate between the two so machine noise hits both alike.
Prints steps/s for each and the time ratio ours / plain (the median over rounds of each
round's ratio; target <= 1.10).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import optax

from jaxopt_ft import data, loop, models, timing, train


def plain_loop(model, params, ds, steps):
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    it = data.train_batches(ds, batch_size=100, seed=0)
    b = next(it)
    params, opt_state, loss = step(params, opt_state, b["x"], b["label"])  # compile
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        params, opt_state, loss = step(params, opt_state, b["x"], b["label"])
    jax.block_until_ready((params, loss))
    return steps / (time.perf_counter() - t0)


def our_loop(model, params, ds, steps):
    state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-2))
    _, summary = loop.fit(
        state,
        train.make_train_step(),
        lambda s: data.train_batches(ds, batch_size=100, seed=0, start_step=s),
        steps=steps + 1,  # the first step (compilation) is excluded from the rate
        key=jax.random.PRNGKey(0),
        progress=False,
    )
    return summary["train_steps_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    ds = data.load("mnist1d", "train")
    model = models.get("cnn")
    params, _ = train.init_model(model, jax.random.PRNGKey(0), ds.x[:1])
    fresh = lambda: jax.tree.map(lambda x: x.copy(), params)  # noqa: E731
    runs = timing.interleave(
        {
            "plain": lambda: plain_loop(model, fresh(), ds, args.steps),
            "ours": lambda: our_loop(model, fresh(), ds, args.steps),
        },
        rounds=args.repeats,
    )
    ours, plain = runs["ours"], runs["plain"]
    ours_sps, plain_sps = statistics.median(ours), statistics.median(plain)
    # Time per step ours / plain (= plain steps/s over ours), paired round by round.
    ratio = timing.median_ratio(plain, ours)
    print(f"ours:  {ours_sps:8.0f} steps/s  (runs: {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"plain: {plain_sps:8.0f} steps/s  (runs: {', '.join(f'{v:.0f}' for v in plain)})")
    print(f"time per step, ours / plain: {ratio:.3f}  (target <= 1.10)")
    print(
        json.dumps(
            {
                "name": "ours_vs_plain_jax_step",
                "value": 1000.0 / ours_sps,
                "baseline": 1000.0 / plain_sps,
                "ratio": ratio,
                "target": 1.10,
                "unit": "ms/step",
            }
        )
    )


if __name__ == "__main__":
    main()
