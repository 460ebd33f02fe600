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

from typing import Any, NamedTuple

import jax

from jaxopt_ft import data, quant, report, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common, pruning, quantizing
from jaxopt_ft.experiments.settings import BitsSweepSettings as Settings

METHODS = ("ptq_weights", "ptq", "qat")


class Setup(NamedTuple):
    """What the quantization helpers read (a pruning experiment's context has the same)."""

    s: Settings
    workdir: str
    progress: bool
    model: Any
    train_ds: data.Dataset
    test_ds: data.Dataset


def validate(s: Settings) -> None:
    common.validate_common(s)
    quantizing.validate_quant(s)


def dense_phase(ctx: Setup) -> train.TrainState:
    """Trains (or restores) the dense model with the top-level optimizer and ``train`` keys."""
    s = ctx.s
    k_init, k_train = jax.random.split(common.seed_key(s))
    tx = common.build_optimizer(s, steps=s.train.steps)
    state = common.new_state(ctx.model, k_init, ctx.train_ds.x[:1], tx)
    batches = common.train_batches(s, ctx.train_ds, batch_size=s.train.batch_size, seed=s.seed)
    state, _ = common.fit_phase(
        s, state, common.classification_step(s), batches, workdir=ctx.workdir, phase="dense",
        steps=s.train.steps, key=k_train, progress=ctx.progress,
    )  # fmt: skip
    return state


def one_row(ctx: Setup, dense: train.TrainState, method: str, bits: int, end: int) -> dict:
    """Quantizes ``dense`` with ``method`` at ``bits`` and measures the result."""
    weights = quantizing.layer_bits(ctx.model, dense.params, bits, end_bits=end)
    acts = None if method == "ptq_weights" else weights
    params, stats = dense.params, dense.batch_stats
    if method == "qat":
        params, stats = quantizing.qat(
            ctx, params, stats, weights=weights, acts=acts, phase=f"qat@{bits}"
        )
    qparams = quantizing.quantize(ctx, params, weights)
    deq = quant.dequantize_params(qparams)
    ranges = None if acts is None else quantizing.calibrated_ranges(ctx, deq, stats)
    fwd = quantizing.fake_quant_forward(ctx, weights, acts, ranges)
    size = quant.quantized_bytes(qparams)
    return {
        "name": f"{method}@{bits}",
        "method": method,
        "bits": bits,
        "test_accuracy": pruning.accuracy(ctx, fwd, train.variables_of(deq, stats)),
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


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    train_ds = common.load_split(s, "train")
    test_ds = common.load_split(s, "test")
    model = common.build_model(s, num_classes=train_ds.num_classes)
    ctx = Setup(s, workdir, progress, model, train_ds, test_ds)
    dense = dense_phase(ctx)
    dense_accuracy = common.evaluate(s, dense.apply_fn, dense.variables(), test_ds)
    dense_accuracy = dense_accuracy["test_accuracy"]
    end = s.quant.first_last_bits
    rows = [one_row(ctx, dense, m, b, end) for m in s.sweep.methods for b in s.sweep.bits]
    return common.report(
        s,
        rows,
        dense_test_accuracy=dense_accuracy,
        dense_size_bytes=tree_lib.tree_bytes(dense.params),
        first_last_bits=end,
        plots=[plot(workdir, rows, dense_accuracy)],
        wall_s=timer(),
    )
