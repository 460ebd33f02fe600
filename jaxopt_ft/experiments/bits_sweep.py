"""Experiment ``bits_sweep``: test accuracy vs bit width for post-training and QAT quantization.

One dense model is trained (phase ``dense``); then, for every width ``b`` of ``sweep.bits``,
every method of ``sweep.methods`` quantizes it:

- ``ptq_weights``: kernels at ``b`` bits (symmetric, per output channel), float activations;
- ``ptq``: kernels and the inputs of every Dense/Conv layer at ``b`` bits, the activation
  ranges calibrated on ``quant.calibration_batches`` training batches (``quant.observer``);
- ``qat``: quantization-aware fine-tuning from the dense weights (``quant.qat_steps`` steps at
  ``quant.learning_rate``, phase ``qat@<b>``), weights and activations at ``b`` bits, then
  calibrated like ``ptq``.

In every method the first and last layers stay at ``quant.first_last_bits`` (0: at ``b`` like
the others). Models are evaluated fake-quantized (the integer path gives the same predictions;
see ``compress``'s ``agreement_with_fake_quant``).

Rows: ``name`` (``<method>@<b>``), ``method``, ``bits``, ``test_accuracy``, ``size_bytes``
(integers, int4-packed at 4 bits or fewer, plus float32 scales and biases) and
``compression`` (dense float32 bytes / ``size_bytes``). The report holds
``dense_test_accuracy`` and ``bits_accuracy.png``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxopt_ft import quant, report, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import _quantizing, common
from jaxopt_ft.quant import core as quant_core

METHODS = ("ptq_weights", "ptq", "qat")


def settings(config) -> dict[str, Any]:
    """The ``quant`` section plus ``sweep.bits`` and ``sweep.methods``, checked."""
    s = _quantizing.validate_quant(config)
    methods = common.get(config, "sweep.methods")
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise ValueError(f"sweep.methods must be a non-empty list, got {methods!r}.")
    if any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(
            f"sweep.methods={list(methods)!r} must be distinct methods among: {', '.join(METHODS)}."
        )
    widths = common.get(config, "sweep.bits")
    if isinstance(widths, (str, int)) or not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"sweep.bits must be a non-empty list of widths, got {widths!r}.")
    for i, b in enumerate(widths):
        quant_core.check_bits(b, what=f"sweep.bits[{i}]")
    if len(set(widths)) != len(widths):
        raise ValueError(f"sweep.bits={list(widths)!r} has duplicates; remove them.")
    return {**s, "methods": tuple(methods), "widths": tuple(int(b) for b in widths)}


def validate(config) -> None:
    common.validate_common(config)
    settings(config)


def dense_phase(ctx: _quantizing.Setup) -> train.TrainState:
    """Trains (or restores) the dense model with the top-level optimizer and ``train`` keys."""
    config = ctx.config
    k_init, k_train = jax.random.split(common.seed_key(config))
    params, batch_stats = train.init_model(ctx.model, k_init, ctx.train_ds.x[:1])
    steps = common.get(config, "train.steps")
    state = train.TrainState.create(
        apply_fn=ctx.model.apply,
        params=params,
        tx=common.build_optimizer(config, steps=steps),
        batch_stats=batch_stats,
    )
    step_fn = train.make_train_step(label_smoothing=common.get(config, "train.label_smoothing"))
    state, _ = common.fit(
        config, state, step_fn, ctx.train_ds, workdir=ctx.workdir, phase="dense",
        steps=steps, key=k_train, progress=ctx.progress,
    )  # fmt: skip
    return state


def one_row(
    ctx: _quantizing.Setup, dense: train.TrainState, method: str, bits: int, end: int
) -> dict[str, Any]:
    """Quantizes ``dense`` with ``method`` at ``bits`` and measures the result."""
    weights = _quantizing.layer_bits(dense.params, bits, end_bits=end)
    acts = None if method == "ptq_weights" else weights
    params, stats = dense.params, dense.batch_stats
    if method == "qat":
        params, stats = _quantizing.qat(
            ctx, params, stats, weights=weights, acts=acts, phase=f"qat@{bits}"
        )
    qparams = quant.quantize_params(params, _quantizing.weight_rules(weights))
    deq = quant.dequantize_params(qparams)
    ranges = None if acts is None else _quantizing.calibrated_ranges(ctx, deq, stats)
    fwd = _quantizing.fake_quant_forward(ctx, weights, acts, ranges)
    variables = _quantizing.variables_of(deq, stats)
    pred = _quantizing.predictions(ctx, fwd, variables)
    size = quant.quantized_bytes(qparams)
    return {
        "name": f"{method}@{bits}",
        "method": method,
        "bits": bits,
        "test_accuracy": float(np.mean(pred == np.asarray(ctx.test_ds.label))),
        "size_bytes": size,
        "compression": tree_lib.tree_bytes(dense.params) / size,
    }


def plot(workdir: str, rows: list[dict[str, Any]], dense_accuracy: float) -> str:
    """Test accuracy vs bits, one line per method; returns the file name."""
    fig, ax = report.accuracy_by_method(
        rows, x="bits", dense_accuracy=dense_accuracy, dense_label="dense float32"
    )
    ax.set_xticks(sorted({r["bits"] for r in rows}))
    ax.set_xlabel("bits (weights; activations too for ptq and qat)")
    return report.save_plot(fig, workdir, "bits_accuracy.png")


def run(config, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    s = settings(config)
    train_ds = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    model = common.build_model(config, num_classes=train_ds.num_classes)
    ctx = _quantizing.Setup(config, workdir, progress, model, train_ds, test_ds)
    dense = dense_phase(ctx)
    dense_accuracy = common.evaluate(config, dense, test_ds)["test_accuracy"]
    rows = [
        one_row(ctx, dense, method, bits, s["first_last_bits"])
        for method in s["methods"]
        for bits in s["widths"]
    ]
    return {
        "experiment": "bits_sweep",
        "dataset": common.get(config, "dataset.name"),
        "model": common.get(config, "model.name"),
        "rows": rows,
        "dense_test_accuracy": dense_accuracy,
        "dense_size_bytes": tree_lib.tree_bytes(dense.params),
        "first_last_bits": s["first_last_bits"],
        "plots": [plot(workdir, rows, dense_accuracy)],
        "wall_s": timer(),
    }
