"""Pruning overhead, measured side by side in one run.

(a) ``prune_step_vs_dense``: a jitted Adam train step wrapped in ``prune.wrap`` (gradual
    schedule, so the ``lax.cond`` mask update is compiled in) over the same step with plain
    Adam, on the 64-channel MNIST-1D CNN with batch 100. Target: ratio <= 1.05.
(b) ``structured_infer_vs_dense``: jitted inference of the CNN compacted after 50 %
    structured (channel) pruning over the dense CNN's. Target: ratio < 1.
(c) ``head_pruned_infer_vs_dense``: the same for the MNIST-1D ``transformer1d`` (hidden 64,
    2 blocks of 4 heads, MLP 128) with half of every block's attention heads removed (4 -> 2)
    and its MLPs whole, batch 1000. Target: ratio < 1.
(d) ``rigl_step_vs_dense``: the step of (a) under RigL (90 % ERK, drop/regrow every 100 steps
    by the dense gradient the step computes anyway) over plain Adam, timed over blocks of 100
    steps so update and non-update steps are averaged as in training. Target: ratio <= 1.1.

Both use random data: only the cost of the computation matters. Timings interleave the two
variants in blocks and report medians of the per-step time, so machine load affects both
alike. Run::

  python benchmarks/prune_overhead.py            # prints a table, then one JSON line each
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import models, prune, timing

BATCH, LENGTH, CLASSES = 100, 40, 10
TRANSFORMER = models.get("transformer1d", hidden=64, depth=2, num_heads=4, mlp_dim=128)


def _step_factory() -> Callable[[optax.GradientTransformation], Callable[[], Any]]:
    """``make(tx)``: a zero-argument call running one jitted train step of the CNN with ``tx``."""
    model = models.get("cnn", channels=(64, 64, 64))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, LENGTH)), jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, BATCH))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]

    def make(tx: optax.GradientTransformation) -> Callable[[], Any]:
        def loss_fn(p: Any) -> jax.Array:
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p: Any, s: Any) -> tuple[Any, Any]:
            grads = jax.grad(loss_fn)(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        state = {"p": params, "s": tx.init(params)}

        def call() -> Any:
            state["p"], state["s"] = step(state["p"], state["s"])
            return state["p"]

        return call

    return make


RULES = [("conv1/.*", False), (".*/kernel", True), (".*", False)]  # conv1 stays dense


def train_step_figure(*, blocks: int, per_block: int) -> dict[str, Any]:
    """Wrapped-Adam step time over plain-Adam step time."""
    make = _step_factory()
    dense = make(optax.adam(1e-3))
    # Masks are recomputed every 1000 steps, so timed steps take the cheap lax.cond branch
    # (as 99.9 % of real training steps do); the schedule stays compiled in.
    schedule = prune.polynomial(final_sparsity=0.9, begin_step=0, end_step=10**6, frequency=1000)
    wrapped = make(prune.wrap(optax.adam(1e-3), schedule, prune.magnitude(), rules=RULES))
    t = timing.time_side_by_side(
        {"dense": dense, "wrapped": wrapped}, repeats=blocks, number=per_block, warmup=3
    )
    return {
        "name": "prune_step_vs_dense",
        "value": t["wrapped"],
        "baseline": t["dense"],
        "ratio": t["wrapped"] / t["dense"],
        "target": 1.05,
        "unit": "ms",
    }


def rigl_figure(*, blocks: int) -> dict[str, Any]:
    """RigL step time (90 % ERK, drop/grow every 100 steps) over dense Adam's, each timed
    block being 100 consecutive steps: one update step and 99 plain ones."""
    make = _step_factory()
    dense = make(optax.adam(1e-3))
    schedule = prune.cosine(0.9, fraction=0.3, frequency=100, end_step=10**6)
    masker = prune.rigl(key=jax.random.key(0))
    rigl = make(prune.wrap(optax.adam(1e-3), schedule, masker, rules=RULES))
    t = timing.time_side_by_side(
        {"dense": dense, "rigl": rigl}, repeats=blocks, number=100, warmup=100
    )
    return {
        "name": "rigl_step_vs_dense",
        "value": t["rigl"],
        "baseline": t["dense"],
        "ratio": t["rigl"] / t["dense"],
        "target": 1.1,
        "unit": "ms",
    }


def structured_figure(
    *,
    blocks: int,
    per_block: int,
    model=None,
    sparsity: Any = 0.5,
    name: str = "structured_infer_vs_dense",
    batch: int = BATCH,
) -> dict[str, Any]:
    """Compacted inference time over dense inference time (default: the CNN, 50 % of its
    channels removed)."""
    model = model or models.get("cnn", channels=(64, 64, 64))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, LENGTH)), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    masks = prune.structured_masks(model, params, sparsity=sparsity)
    small = prune.compact(model, params, masks)
    dense_fn = jax.jit(model.apply)
    small_fn = jax.jit(small.model.apply)
    dense_vars, small_vars = {"params": params}, {"params": small.params}
    want = dense_fn({"params": prune.apply_masks(params, masks)}, x)
    np.testing.assert_allclose(small_fn(small_vars, x), want, atol=1e-5)
    fns = {"dense": lambda: dense_fn(dense_vars, x), "compact": lambda: small_fn(small_vars, x)}
    t = timing.time_side_by_side(fns, repeats=blocks, number=per_block)
    return {
        "name": name,
        "value": t["compact"],
        "baseline": t["dense"],
        "ratio": t["compact"] / t["dense"],
        "target": 1.0,
        "unit": "ms",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=15, help="timed blocks per variant")
    parser.add_argument("--per-block", type=int, default=20, help="calls per timed block")
    args = parser.parse_args()
    figures = [
        train_step_figure(blocks=args.blocks, per_block=args.per_block),
        rigl_figure(blocks=max(args.blocks // 3, 3)),
        structured_figure(blocks=args.blocks, per_block=args.per_block),
        structured_figure(
            blocks=args.blocks,
            per_block=args.per_block,
            model=TRANSFORMER,
            sparsity=[(".*/heads", 0.5), (".*", 0.0)],
            name="head_pruned_infer_vs_dense",
            batch=1000,
        ),  # fmt: skip
    ]
    print(f"{'figure':28} {'value':>10} {'baseline':>10} {'ratio':>7} {'target':>7}")
    for f in figures:
        ok = f["ratio"] <= f["target"] if f["target"] > 1 else f["ratio"] < f["target"]
        print(
            f"{f['name']:28} {f['value']:8.3f}{f['unit']} {f['baseline']:8.3f}{f['unit']} "
            f"{f['ratio']:7.3f} {f['target']:7.2f} {'ok' if ok else 'MISSED'}"
        )
    for f in figures:
        print(json.dumps(f))


if __name__ == "__main__":
    main()
