"""Runs in its own process for tests/test_distributed.py: multi-process training and restores.

    python tests/parallel_worker.py train --runs fsdp,pmap --out OUT [--ckpt DIR]
    python tests/parallel_worker.py restore --ckpt DIR1,DIR2 --layout fsdp,plain --out OUT

The device count comes from ``XLA_FLAGS`` and the process group from ``$JAXOPT_FT_*`` (read
by ``parallel.initialize``), both set by the test. The same functions run in the test process
itself for the single-process reference, so both sides train exactly the same model on exactly
the same batches.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxopt_ft import checkpoint, models, parallel, prune, quant, train, tree  # noqa: E402

BATCH = 32
STEPS = 20
MODEL = models.get("cnn", channels=(8, 16, 16))
# Fixed activation ranges for QAT under pmap, where per-batch ranges would be per device.
ACT_RANGES = {"conv1": (-4.0, 4.0), "conv2": (0.0, 3.0), "conv3": (0.0, 3.0), "head": (0.0, 3.0)}
VARIANTS = ("plain", "axis_step", "compress", "compress_calibrated")


def batches(steps: int = STEPS) -> list[dict[str, np.ndarray]]:
    """The global batches, identical in every process."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps, BATCH, 40)).astype(np.float32)
    y = rng.integers(0, 10, size=(steps, BATCH)).astype(np.int32)
    return [{"x": x[k], "label": y[k]} for k in range(steps)]


def initial_params() -> dict:
    """Deterministic numpy params of MODEL (no compiled ``init``: compiling it is slow)."""
    shapes = jax.eval_shape(lambda: MODEL.init(jax.random.PRNGKey(0), np.zeros((1, 40)))["params"])
    rng = np.random.default_rng(1)

    def fill(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 10
        return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(fill, shapes)


def optimizer(variant: str) -> optax.GradientTransformation:
    if variant.startswith("compress"):
        schedule = prune.polynomial(final_sparsity=0.5, begin_step=4, end_step=12, frequency=4)
        return prune.wrap(optax.adam(1e-2), schedule, prune.magnitude())
    return optax.adam(1e-2)


def new_state(variant: str = "plain") -> train.TrainState:
    params = initial_params()
    tx = optimizer(variant)
    return train.TrainState(
        step=np.zeros((), np.int32),
        params=params,
        opt_state=jax.jit(tx.init)(params),
        batch_stats={},
        aux=(),
        apply_fn=MODEL.apply,
        tx=tx,
    )


def explicit_step(*, axis_name: str | None = None):
    """A hand-written step in the classic pmap style: it averages its own gradients."""

    def step(state, batch, key):
        del key

        def loss_fn(params):
            logits = state.apply_fn({"params": params}, batch["x"], train=True)
            labels = batch["label"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = parallel.all_mean(grads, axis_name)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, {"loss": parallel.all_mean(loss, axis_name)}

    return step


def train_step(variant: str, strategy: parallel.Strategy):
    if variant == "axis_step":
        return explicit_step(axis_name=strategy.axis_name)
    if variant.startswith("compress"):
        ranges = ACT_RANGES if variant == "compress_calibrated" else None
        apply_fn = quant.fake_quant_apply_fn(MODEL, weight_bits=4, act_bits=8, act_ranges=ranges)
        return train.make_train_step(apply_fn=apply_fn, axis_name=strategy.axis_name)
    return train.make_train_step(axis_name=strategy.axis_name)


@functools.cache
def run_training(mode: str, fsdp: bool = False, variant: str = "plain") -> dict:
    """Trains STEPS steps; returns losses, host params and the final state (checkpoint layout).

    Cached: test files in one pytest process share runs (each costs a compilation).
    """
    strategy = parallel.make(mode, fsdp=fsdp)
    state = strategy.prepare(new_state(variant))
    step = strategy.step(train_step(variant, strategy))
    key = jax.random.PRNGKey(1)
    losses = []
    for batch in batches():
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
    saved = strategy.unwrap(state)
    params = train.numpy_tree(parallel.local(saved.params))
    specs = {
        p: str(getattr(x.sharding, "spec", "single-device"))
        for p, x in tree.flatten(saved.params).items()
    }
    return {
        "losses": np.array(losses),
        "params": tree.flatten(params),
        "specs": specs,
        "state": saved,
    }


def save(state: train.TrainState, ckpt_dir: str) -> None:
    """Writes ``state`` as a checkpoint (collectively when several processes run)."""
    ckpt = checkpoint.Checkpointer(ckpt_dir)
    ckpt.save(STEPS, state.tree())
    ckpt.close()


def restore(ckpt_dir: str, layout: str) -> dict:
    """Restores the checkpoint in ``ckpt_dir`` onto this process's devices in ``layout``.

    ``plain``: one device; ``replicated`` / ``fsdp``: mode ``sharding`` over every device.
    """
    state = new_state()
    if layout == "plain":
        state = jax.device_put(state, jax.devices()[0])
    else:
        strategy = parallel.make("sharding", fsdp=layout == "fsdp")
        state = strategy.unwrap(strategy.prepare(state))
    step, restored = checkpoint.Checkpointer(ckpt_dir).restore(state.tree())
    specs = {
        path: str(getattr(x.sharding, "spec", "single-device"))
        for path, x in tree.flatten(restored["params"]).items()
    }
    params = train.numpy_tree(parallel.local(restored["params"]))
    return {"step": step, "params": tree.flatten(params), "specs": specs}


RUNS = {
    "none": ("none", False),
    "replicated": ("sharding", False),
    "fsdp": ("sharding", True),
    "pmap": ("pmap", False),
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["train", "restore"])
    parser.add_argument("--runs", default="fsdp", help=f"train: comma-separated of {list(RUNS)}")
    parser.add_argument("--ckpt", help="train: save under CKPT/<run>; restore: comma-separated")
    parser.add_argument("--layout", default="plain", help="restore: one layout per checkpoint")
    parser.add_argument("--out", required=True, help="writes OUT.npz and OUT.json")
    args = parser.parse_args(argv)
    parallel.initialize()
    meta = {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "collectives": jax.config.jax_cpu_collectives_implementation,
    }
    arrays = {}
    if args.task == "train":
        meta["specs"] = {}
        for name in args.runs.split(","):
            result = run_training(*RUNS[name])
            if args.ckpt:
                save(result["state"], os.path.join(args.ckpt, name))
            meta["specs"][name] = result["specs"]
            arrays[f"{name}:losses"] = result["losses"]
            arrays.update({f"{name}:{k}": v for k, v in result["params"].items()})
    else:
        meta["restored"] = []
        pairs = zip(args.ckpt.split(","), args.layout.split(","), strict=True)
        for i, (d, layout) in enumerate(pairs):
            result = restore(d, layout)
            meta["restored"].append({"step": result["step"], "specs": result["specs"]})
            arrays.update({f"{i}:{k}": v for k, v in result["params"].items()})
    if parallel.is_main_process():
        np.savez(args.out + ".npz", **arrays)
        with open(args.out + ".json", "w") as f:
            json.dump(meta, f)


if __name__ == "__main__":
    main(sys.argv[1:])
