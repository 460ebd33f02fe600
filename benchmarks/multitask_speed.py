"""Cost of per-task gradients: a PCGrad / GradNorm step against an equal-weight step.

PCGrad and GradNorm need every task's gradient. `jaxopt_ft.multitask.per_task_grads` gets them
in one `jax.jacrev` pass (one forward, the backward vmapped over the T task selectors), so a
PCGrad step should cost at most about T + 1 equal-weight steps (T backward passes plus the
shared forward), and less when the vmapped backward batches well. Also timed: the same T
gradients from T separately jitted ``jax.grad`` calls driven from Python (T forward and T
backward passes, the PyTorch-style loop), and from T ``jax.grad`` calls traced into one jit
(where XLA shares the forward pass too: the fair lower bound for the one-pass form).

Setup: the MNIST-1D CNN trunk (5,210 params) with the four tasks of
configs/mnist1d_multitask.py (digit, parity, large, slope), batch 100, Adam, jitted steps with
the state donated. Timings interleave the variants and report medians over repeats.

    python benchmarks/multitask_speed.py [--repeats 7] [--steps 50]

Prints ratios, then one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import data, models, timing
from jaxopt_ft import multitask as mt

SPEC = {
    "digit": {"kind": "classification", "num_classes": 10},
    "parity": {"kind": "classification", "num_classes": 2},
    "large": {"kind": "classification", "num_classes": 2},
    "slope": {"kind": "regression"},
}


def _batch(batch_size: int, tasks) -> dict:
    ds = data.load("mnist1d", "train")
    targets = data.derive_targets(ds, [t.name for t in tasks])
    return {"x": ds.x[:batch_size], "targets": {k: v[:batch_size] for k, v in targets.items()}}


def _step_runner(tasks, method_name: str, batch: dict):
    model = mt.MultiTaskModel(models.get("cnn"), tasks)
    method = mt.Method(name=method_name)
    state, method = mt.init_state(
        model, method, key=jax.random.PRNGKey(0), sample_x=batch["x"][:1], tx=optax.adam(1e-3)
    )
    step = jax.jit(mt.make_train_step(tasks, method), donate_argnums=0)
    batch = jax.device_put(batch)
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], metrics = step(holder["state"], batch, jax.random.PRNGKey(holder["i"]))
        holder["i"] += 1
        return holder["state"], metrics

    return run


def _grads_runner(tasks, batch: dict, *, mode: str):
    num = len(tasks)
    model = mt.MultiTaskModel(models.get("cnn"), tasks)
    params = model.init(jax.random.PRNGKey(0), batch["x"][:1])["params"]
    x, targets = jnp.asarray(batch["x"]), jax.device_put(batch["targets"])

    def losses(p):
        out = model.apply({"params": p}, x)
        return jnp.stack(
            [mt.tasks.task_loss(t, out[t.name], targets[t.name]).mean() for t in tasks]
        )

    if mode == "one_pass":
        fns = [jax.jit(lambda p: mt.per_task_grads(losses, p)[1])]
    elif mode == "unrolled":  # T grads traced into one jit: XLA shares their forward pass
        fns = [jax.jit(lambda p: [jax.grad(lambda q, i=i: losses(q)[i])(p) for i in range(num)])]
    else:  # T separately jitted grads called from Python, as a PyTorch-style loop does
        fns = [jax.jit(jax.grad(lambda q, i=i: losses(q)[i])) for i in range(num)]

    return lambda: [fn(params) for fn in fns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()

    tasks = mt.make_tasks(SPEC)
    num = len(tasks)
    batch = _batch(args.batch_size, tasks)
    ms = timing.time_side_by_side(
        {
            "equal": _step_runner(tasks, "equal", batch),
            "pcgrad": _step_runner(tasks, "pcgrad", batch),
            "gradnorm": _step_runner(tasks, "gradnorm", batch),
            "grads_one_pass": _grads_runner(tasks, batch, mode="one_pass"),
            "grads_python": _grads_runner(tasks, batch, mode="python"),
            "grads_unrolled": _grads_runner(tasks, batch, mode="unrolled"),
        },
        repeats=args.repeats,
        number=args.steps,
        warmup=3,
    )
    print(f"T = {num} tasks, MNIST-1D CNN trunk, batch {args.batch_size}, {jax.devices()[0]}")
    print(f"equal-weight step      {ms['equal']:.3f} ms")
    for name in ("pcgrad", "gradnorm"):
        print(
            f"{name:<9} step         {ms[name]:.3f} ms  = {ms[name] / ms['equal']:.2f}x equal "
            f"(target <= T + 1 = {num + 1})"
        )
    one = ms["grads_one_pass"]
    print(f"per-task grads, one jacrev pass           {one:.3f} ms")
    for key, what in (
        ("grads_python", "T jitted grads from Python"),
        ("grads_unrolled", "T grads unrolled in one jit"),
    ):
        print(f"per-task grads, {what:<28}{ms[key]:.3f} ms = {ms[key] / one:.2f}x one pass")
    figures = [
        ("pcgrad_step_vs_equal", ms["pcgrad"], ms["equal"], num + 1),
        ("gradnorm_step_vs_equal", ms["gradnorm"], ms["equal"], num + 1),
        ("per_task_grads_one_pass_vs_python_loop", one, ms["grads_python"], 1.0),
    ]
    for name, value, baseline, target in figures:
        line = {
            "name": name,
            "value": round(value, 4),
            "baseline": round(baseline, 4),
            "ratio": round(value / baseline, 3),
            "target": target,
            "unit": "ms",
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
