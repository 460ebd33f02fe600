"""Data-parallel scaling: train steps/s on 1, 2, 4 and 8 devices at the same global batch.

    python benchmarks/scaling.py [--steps 200] [--repeats 3] [--batch 256] [--platform cpu]

One subprocess per device count (on CPU the devices are simulated with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; they share the machine's cores, so
there this is a correctness smoke that the modes run and agree, not a speed-up). Each child
trains the MNIST-1D CNN (64 channels) with `train.make_train_step` under parallel modes
``sharding`` and ``pmap`` (and ``none`` on 1 device: the wrappers' overhead) and reports the
median steps/s over ``--repeats`` timed runs of ``--steps`` steps (compilation excluded),
plus the loss after the first 10 steps, which must agree across counts and modes (after
hundreds more steps float reassociation makes runs drift apart, as on any two machines).

Prints a table and one JSON line per figure: ``devices8_vs_1`` (and ``pmap_devices8_vs_1``) =
step time on 8 devices / step time on 1 (no target on CPU; below 1 means a speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

COUNTS = (1, 2, 4, 8)
WARMUP = 10
MODES = ("sharding", "pmap")


def _stepper(step, state, batches: list, key):
    """Returns a call that runs one step (cycling over ``batches``) and returns its outputs."""
    held = {"state": state, "k": 0}

    def call():
        held["state"], metrics = step(held["state"], batches[held["k"] % len(batches)], key)
        held["k"] += 1
        return held["state"], metrics

    return call


def child(args: argparse.Namespace) -> None:
    import jax
    import numpy as np
    import optax

    from jaxopt_ft import models, parallel, timing, train

    if args.devices > jax.device_count():
        print("RESULT " + json.dumps({"skipped": f"only {jax.device_count()} devices"}))
        return
    model = models.get("cnn", channels=(64, 64, 64))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, args.batch, 40)).astype(np.float32)
    y = rng.integers(0, 10, size=(8, args.batch)).astype(np.int32)
    batches = [{"x": x[k], "label": y[k]} for k in range(8)]
    params, _ = jax.jit(lambda k: train.init_model(model, k, x[0, :1]))(jax.random.PRNGKey(0))
    params = jax.device_get(params)
    out = {"devices": jax.device_count(), "backend": jax.default_backend()}
    for mode in MODES + (("none",) if args.devices == 1 else ()):
        strategy = parallel.make(mode, devices=args.devices)
        state = train.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))
        state = strategy.prepare(state)
        step = strategy.step(train.make_train_step())
        call = _stepper(step, state, batches, jax.random.PRNGKey(1))
        for _ in range(WARMUP):  # compilation, and the loss to compare across counts
            _, metrics = call()
        warm_loss = float(metrics["loss"])
        ms = timing.time_rounds({mode: call}, repeats=args.repeats, number=args.steps, warmup=0)
        rates = [1e3 / t for t in ms[mode]]
        out[mode] = {"steps_per_s": statistics.median(rates), "loss": warm_loss}
    print("RESULT " + json.dumps(out), flush=True)


def run_count(n: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    cmd = [sys.executable, __file__, "--child", "--devices", str(n)]
    cmd += ["--steps", str(args.steps), "--repeats", str(args.repeats), "--batch", str(args.batch)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{n}-device run failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--platform", choices=["cpu", "default"], default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch % max(COUNTS):
        parser.error(f"--batch {args.batch} must divide by {max(COUNTS)} devices.")
    if args.child:
        child(args)
        return
    results = {n: run_count(n, args) for n in COUNTS}
    for n, r in list(results.items()):
        if "skipped" in r:
            print(f"{n} devices: skipped ({r['skipped']})")
            del results[n]
    backend = results[1]["backend"]
    print(f"MNIST-1D CNN (64 ch), global batch {args.batch}, {backend}, steps/s (median):")
    print(f"{'devices':>8} " + " ".join(f"{m:>10}" for m in MODES) + "   loss at step 10")
    for n, r in results.items():
        rates = " ".join(f"{r[m]['steps_per_s']:10.1f}" for m in MODES)
        print(f"{n:>8} {rates}   {r['sharding']['loss']:.6f} / {r['pmap']['loss']:.6f}")
    if "none" in results[1]:
        print(f"mode none (plain jax.jit), 1 device: {results[1]['none']['steps_per_s']:.1f}")
    losses = [r[m]["loss"] for r in results.values() for m in MODES]
    spread = (max(losses) - min(losses)) / abs(min(losses))
    print(f"losses at step {WARMUP} agree across counts and modes to {spread:.1e} (relative)")
    for mode, name in (("sharding", "devices8_vs_1"), ("pmap", "pmap_devices8_vs_1")):
        if 8 not in results:
            break
        t1 = 1e3 / results[1][mode]["steps_per_s"]
        t8 = 1e3 / results[8][mode]["steps_per_s"]
        print(f"{mode}: step time 8 devices / 1 device = {t8 / t1:.2f}  ({t8:.2f} vs {t1:.2f} ms)")
        figure = {
            "name": name,
            "value": round(t8, 4),
            "baseline": round(t1, 4),
            "ratio": round(t8 / t1, 4),
            "target": None,
            "unit": f"ms/step ({backend})",
        }
        print(json.dumps(figure))


if __name__ == "__main__":
    main()
