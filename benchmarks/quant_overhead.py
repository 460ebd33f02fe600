"""Quantization overhead, measured side by side in one run.

1. QAT train step vs plain train step: the 64-channel MNIST-1D CNN (``models.get("cnn",
   channels=(64, 64, 64))``), batch 100 of random data, adam. The QAT step runs the model
   through :func:`jaxopt_ft.quant.fake_quant_apply_fn` (weights: conv1 and head 8 bits, other
   kernels 4 bits; every Dense/Conv input 8 bits, per-batch ranges). Target: ratio <= 1.25.
2. The same on a transformer (``qat_step_vs_dense_transformer``): the MNIST-1D
   ``transformer1d`` (10 patches of 4 samples, hidden 64, 2 blocks of 4 heads, MLP 128),
   every matmul fake-quantized, attention's 3-D projection kernels per head and output channel
   (patch embedding and head 8 bits, the rest 4 bits; every op's input 8 bits). Target <= 1.3.
3. int8 inference vs fp32 inference: :func:`jaxopt_ft.quant.int8_apply_fn` (int8 x int8 ->
   int32 conv/dot, calibrated activation ranges) vs ``model.apply``, batch 1000. No target:
   XLA's CPU backend has no fast int8 convolution, so this is reported as measured.

Both variants of a figure are timed alternately in the same loop, and medians over repeats are
compared, so machine load affects both alike. Prints a human line and a JSON line per figure.

Usage:
    python benchmarks/quant_overhead.py [--repeats 30] [--steps 10]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import models, ops, quant, timing

WEIGHT_BITS = [("conv1/kernel|head/kernel", 8), (".*kernel", 4), (".*", None)]
TRANSFORMER_BITS = [("patch_embed/kernel|head/kernel", 8), (".*kernel", 4), (".*", None)]


def _report(name: str, value: float, baseline: float, target: float | None, what: str) -> None:
    ratio = value / baseline
    verdict = ""
    if target is not None:
        verdict = f" (target <= {target:.2f}: {'met' if ratio <= target else 'MISSED'})"
    print(f"{what}: {value:.3f} ms vs {baseline:.3f} ms -> ratio {ratio:.3f}{verdict}")
    row = {"name": name, "value": round(value, 4), "baseline": round(baseline, 4)}
    row.update({"ratio": round(ratio, 4), "target": target, "unit": "ms"})
    print(json.dumps(row))


def bench_qat_step(
    *, repeats: int, steps: int, model=None, weight_bits=WEIGHT_BITS
) -> tuple[float, float]:
    """Returns (QAT step ms, plain step ms), medians (default: the 64-channel CNN)."""
    model = model or models.get("cnn", channels=(64, 64, 64))
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (100, 40))
    y = jax.random.randint(ky, (100,), 0, 10)
    variables = model.init(kp, x[:1])
    params = variables["params"]
    tx = optax.adam(1e-3)
    axes = ops.kernel_axes(ops.find_ops(model, variables, x[:1]))
    qat_apply = quant.fake_quant_apply_fn(
        model, weight_bits=weight_bits, act_bits=8, weight_axis=axes
    )

    def make_step(apply_fn):
        def loss_fn(p):
            logits = apply_fn({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, opt_state):
            loss, g = jax.value_and_grad(loss_fn)(p)
            updates, opt_state = tx.update(g, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        return step

    states = {}
    for name, fn in (("dense", model.apply), ("qat", qat_apply)):
        states[name] = (make_step(fn), [params, tx.init(params)])

    def runner(name):
        step, st = states[name]

        def run():
            st[0], st[1], loss = step(st[0], st[1])
            return loss

        return run

    ms = timing.time_side_by_side(
        {"dense": runner("dense"), "qat": runner("qat")}, repeats=repeats, number=steps
    )
    return ms["qat"], ms["dense"]


def bench_int8_inference(*, repeats: int, steps: int) -> tuple[float, float]:
    """Returns (int8 inference ms, fp32 inference ms), medians, batch 1000."""
    model = models.get("cnn", channels=(64, 64, 64))
    x = jax.random.normal(jax.random.key(1), (1000, 40))
    variables = model.init(jax.random.key(2), x[:1])
    ranges = quant.calibrate(model, variables, [x[:500], x[500:]])
    qvars = {"params": quant.quantize_params(variables["params"], 8)}
    fp32 = jax.jit(model.apply)
    int8 = jax.jit(quant.int8_apply_fn(model, act_ranges=ranges))
    agree = float(jnp.mean(fp32(variables, x).argmax(-1) == int8(qvars, x).argmax(-1)))
    print(f"int8 vs fp32 prediction agreement on random inputs: {agree:.4f}")
    ms = timing.time_side_by_side(
        {"int8": lambda: int8(qvars, x), "fp32": lambda: fp32(variables, x)},
        repeats=repeats,
        number=steps,
    )
    return ms["int8"], ms["fp32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats (median)")
    parser.add_argument("--steps", type=int, default=10, help="calls per timed repeat")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    qat, dense = bench_qat_step(repeats=args.repeats, steps=args.steps)
    _report("qat_step_vs_dense", qat, dense, 1.25, "QAT train step / plain train step")
    transformer = models.get("transformer1d", hidden=64, depth=2, num_heads=4, mlp_dim=128)
    qat, dense = bench_qat_step(
        repeats=args.repeats, steps=args.steps, model=transformer, weight_bits=TRANSFORMER_BITS
    )
    _report(
        "qat_step_vs_dense_transformer", qat, dense, 1.3,
        "QAT train step / plain train step (transformer, attention quantized)",
    )  # fmt: skip
    i8, f32 = bench_int8_inference(repeats=args.repeats, steps=args.steps)
    _report("int8_infer_vs_fp32", i8, f32, None, "int8 inference / fp32 inference")


if __name__ == "__main__":
    main()
