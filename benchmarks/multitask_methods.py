"""Step time of every gradient-balancing method against equal weighting, and rep_grad's saving.

Each method's jitted step (MNIST-1D CNN trunk, the four tasks of configs/mnist1d_multitask.py,
batch 100, Adam, state donated) is timed side by side with the equal-weight step; the
gradient methods pay one per-task pass (`per_task_grads`) plus their solver, so T + 1
equal-weight steps is their budget. ``rep_grad_step_vs_param_grad`` compares MGDA on the
representation's gradients (``mgda_ub``: T backward passes through the heads only, then one
weighted backward through the trunk) with MGDA on the trunk parameters' gradients.

    python benchmarks/multitask_methods.py [--repeats 5] [--steps 30]

Prints ratios, then one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json

import jax
import optax

from jaxopt_ft import data, models, timing
from jaxopt_ft import multitask as mt

SPEC = {
    "digit": {"kind": "classification", "num_classes": 10},
    "parity": {"kind": "classification", "num_classes": 2},
    "large": {"kind": "classification", "num_classes": 2},
    "slope": {"kind": "regression"},
}
METHODS = (
    "mgda",
    "mgda_ub",
    "cagrad",
    "nash_mtl",
    "imtl",
    "gradvac",
    "graddrop",
    "rlw",
    "aligned_mtl",
    "db_mtl",
)


def _batch(batch_size: int, tasks) -> dict:
    ds = data.load("mnist1d", "train")
    targets = data.derive_targets(ds, [t.name for t in tasks])
    return {"x": ds.x[:batch_size], "targets": {k: v[:batch_size] for k, v in targets.items()}}


def _step_runner(tasks, method_name: str, batch: dict):
    model = mt.MultiTaskModel(models.get("cnn"), tasks)
    state, method = mt.init_state(
        model,
        mt.Method(name=method_name),
        key=jax.random.PRNGKey(0),
        sample_x=batch["x"][:1],
        tx=optax.adam(1e-3),
    )
    step = jax.jit(mt.make_train_step(tasks, method), donate_argnums=0)
    batch = jax.device_put(batch)
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], metrics = step(holder["state"], batch, jax.random.PRNGKey(holder["i"]))
        holder["i"] += 1
        return holder["state"], metrics

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()

    tasks = mt.make_tasks(SPEC)
    num = len(tasks)
    batch = _batch(args.batch_size, tasks)
    runners = {name: _step_runner(tasks, name, batch) for name in ("equal", *METHODS)}
    ms = timing.time_side_by_side(runners, repeats=args.repeats, number=args.steps, warmup=3)
    print(f"T = {num} tasks, MNIST-1D CNN trunk, batch {args.batch_size}, {jax.devices()[0]}")
    print(f"equal-weight step   {ms['equal']:.3f} ms")
    for name in METHODS:
        print(f"{name:<12} step    {ms[name]:.3f} ms = {ms[name] / ms['equal']:.2f}x equal")
    figures = [(f"{n}_step_vs_equal", ms[n], ms["equal"], num + 1) for n in METHODS]
    figures.append(("rep_grad_step_vs_param_grad", ms["mgda_ub"], ms["mgda"], 1.0))
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
