"""Quantized models from already-trained states: the quantization rows of ``compress``.

The ``quant`` settings (`jaxopt_ft.experiments.sections.Quant`):

- ``bits``: weight width of ``int8_ptq`` / ``int8_weights``, and the activation width of
  every row that quantizes activations;
- ``qat_bits``: weight width of the QAT rows (``qat_int4``, ``pruned_quantized``);
- ``first_last_bits``: weight and activation width of the first and last Dense/Conv layers
  in the QAT rows (the most sensitive ones); 0 quantizes them like the others;
- ``qat_steps``, ``learning_rate``: the fine-tune of each QAT phase, with the settings'
  optimizer and schedule; 0 steps makes those rows plain PTQ at the same widths;
- ``calibration_batches``: training batches (``train.batch_size`` each) that set the
  activation ranges; ``observer``: how they are folded (``quant.OBSERVERS``).

Rows (:func:`quant_rows`); each model is exported with ``quant.export_quantized``, read back,
and the read-back model is what gets evaluated:

- ``int8_ptq``: per-channel weights and calibrated per-tensor activations at ``bits``, run
  with integer matmuls (``quant.int8_apply_fn``); ``agreement_with_fake_quant`` is the
  fraction of test predictions equal to the fake-quant model's (same integers in float).
- ``int8_weights``: weights only at ``bits``, dequantized at load, float activations.
- ``qat_int4``: QAT from the dense weights (phase ``qat``), exported with int4 packing.
- ``pruned_quantized``: QAT of the pruned model with its masks held (phase ``pruned_qat``),
  so its zeros survive, exported in the smallest of the encodings (relative 4-bit indices with
  int4 values, as in Deep Compression, when sparse enough).

``inference`` says how a row ran: ``"int8"`` (integer matmuls), ``"float"`` (weights-only), or
``"fake_quant"`` when a width above 8 rules the integer path out. Every row has
``test_accuracy``, ``size_bytes`` (the file on disk, activation ranges included),
``compression`` (dense float32 bytes / ``size_bytes``), ``params``, ``nonzero_params``,
``sparsity`` and ``step_ms`` (timed side by side with the experiment's other rows).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import data, parallel, prune, quant, train
from jaxopt_ft import ops as ops_lib
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common, pruning

PyTree = Any


def layer_bits(model, params: PyTree, bits: int, *, end_bits: int = 0) -> dict[str, int]:
    """``{layer path: bits}`` for the Dense/Conv layers, in the model's declared forward order;
    the first and last at ``end_bits`` (if > 0)."""
    paths = set(quant.layer_paths(params))
    layers = [p for p in model.layer_order() if p in paths]
    layers += sorted(paths - set(layers))  # layers a model does not declare come last
    out = dict.fromkeys(layers, bits)
    if end_bits and layers:
        out[layers[0]] = out[layers[-1]] = end_bits
    return out


def model_ops(ctx: Any) -> dict[str, ops_lib.Op]:
    """The weight ops of the experiment's model (an abstract trace on one test input)."""
    x = jax.ShapeDtypeStruct((1, *ctx.test_ds.x.shape[1:]), jnp.float32)
    variables = jax.eval_shape(ctx.model.init, jax.random.PRNGKey(0), x)
    return ops_lib.find_ops(ctx.model, variables, x, train=False)


def kernel_axes(ctx: Any) -> dict[str, tuple[int, ...]]:
    """Per-output-channel scale axes of every kernel (per head and channel in attention)."""
    return ops_lib.kernel_axes(model_ops(ctx))


def quantize(ctx: Any, params: PyTree, weights: dict[str, int]) -> PyTree:
    """``params`` with each layer's kernel quantized per output channel at its width."""
    return quant.quantize_params(params, weight_rules(weights), axis=kernel_axes(ctx))


def coverage(ctx: Any, qparams: PyTree) -> dict[str, Any]:
    """``quantized_weight_fraction`` (of the matmul/conv weight entries) and ``quantized_ops``."""
    flat = tree_lib.flatten(qparams, is_leaf=quant.is_qarray)
    chosen = {p for p, x in flat.items() if quant.is_qarray(x)}
    found = model_ops(ctx)
    return {
        "quantized_weight_fraction": ops_lib.weight_fraction(found, chosen),
        "quantized_ops": sum(op.weight in chosen for op in found.values()),
    }


def weight_rules(per_layer: dict[str, int]) -> list[tuple[str, int | None]]:
    """Rules quantizing each layer's kernel at its width and keeping every other leaf float."""
    rules: list[tuple[str, int | None]] = [
        (re.escape(f"{p}/kernel" if p else "kernel"), b) for p, b in per_layer.items()
    ]
    return rules + [(".*", None)]


def act_rules(per_layer: dict[str, int]) -> list[tuple[str, int | None]]:
    """Rules giving each layer's input its width."""
    return [(re.escape(p), b) for p, b in per_layer.items()]


def calibration_inputs(ctx: Any, n: int) -> list[np.ndarray]:
    """The first ``n`` training batches' inputs (the training order of ``seed``)."""
    it = data.train_batches(ctx.train_ds, batch_size=ctx.s.train.batch_size, seed=ctx.s.seed)
    return [next(it)["x"] for _ in range(n)]


def calibrated_ranges(
    ctx: Any, params: PyTree, batch_stats: PyTree
) -> dict[str, tuple[float, float]]:
    """Input ranges of every layer of the model with (dequantized) ``params``."""
    q = ctx.s.quant
    inputs = calibration_inputs(ctx, q.calibration_batches)
    variables = train.variables_of(params, batch_stats)
    return quant.calibrate(ctx.model, variables, inputs, observer=q.observer, train=False)


def fake_quant_forward(
    ctx: Any,
    weights: dict[str, int],
    acts: dict[str, int] | None,
    ranges: dict[str, tuple[float, float]] | None,
) -> Callable:
    """``(variables, x) -> logits`` with fake-quantized weights and layer inputs."""
    fn = quant.fake_quant_apply_fn(
        ctx.model,
        weight_bits=weight_rules(weights),
        act_bits=None if acts is None else act_rules(acts),
        act_ranges=ranges,
        weight_axis=kernel_axes(ctx),
    )
    return functools.partial(pruning._apply, fn)


def qat(
    ctx: Any,
    params: PyTree,
    batch_stats: PyTree,
    *,
    weights: dict[str, int],
    acts: dict[str, int] | None,
    phase: str,
    masks: PyTree | None = None,
) -> tuple[PyTree, PyTree]:
    """Fine-tunes a copy of ``params`` quantization-aware (resumable ``phase``).

    Each layer's kernel is fake-quantized at its ``weights`` width and its input at its
    ``acts`` width (each batch's own range); ``masks`` (pruning) are held by ``prune.wrap``,
    so pruned weights stay zero. ``quant.qat_steps == 0`` returns the inputs unchanged.

    Returns:
      ``(params, batch_stats)`` after fine-tuning.
    """
    q = ctx.s.quant
    if not q.qat_steps:
        return params, batch_stats
    tx = common.build_optimizer(ctx.s, steps=q.qat_steps, learning_rate=q.learning_rate)
    if masks is not None:
        tx = prune.wrap(tx, None, prune.fixed(jax.tree.map(jnp.copy, masks)))  # state is donated
    apply_fn = quant.fake_quant_apply_fn(
        ctx.model,
        weight_bits=weight_rules(weights),
        act_bits=None if acts is None else act_rules(acts),
        weight_axis=kernel_axes(ctx),
        axis_name=common.strategy(ctx.s).axis_name,  # pmap: ranges over all devices
    )
    state = train.TrainState.create(
        apply_fn=ctx.model.apply,
        params=jax.tree.map(jnp.copy, params),  # fit donates the state it trains
        tx=tx,
        batch_stats=batch_stats,
    )
    key = jax.random.fold_in(common.seed_key(ctx.s), zlib.crc32(phase.encode()))
    batches = common.train_batches(
        ctx.s, ctx.train_ds, batch_size=ctx.s.train.batch_size, seed=ctx.s.seed
    )
    state, _ = common.fit_phase(
        ctx.s, state, common.classification_step(ctx.s, apply_fn=apply_fn), batches,
        workdir=ctx.workdir, phase=phase, steps=q.qat_steps, key=key, progress=ctx.progress,
    )  # fmt: skip
    return state.params, state.batch_stats


def export(
    ctx: Any, name: str, tree: PyTree, *, encodings: tuple[str, ...]
) -> tuple[str, int, PyTree]:
    """Writes ``tree`` to ``workdir/quant/<name>.jfq`` in the smallest of ``encodings``.

    Returns:
      ``(encoding, bytes on disk, the tree read back from the file)``.
    """
    if parallel.is_main_process():
        folder = os.path.join(ctx.workdir, "quant")
        os.makedirs(folder, exist_ok=True)
    else:  # the other processes of a multi-process run measure a private copy
        folder = tempfile.mkdtemp(prefix="jaxopt_ft_quant_")
    path = os.path.join(folder, f"{name}.jfq")
    sizes = {}
    for enc in encodings:
        sizes[enc] = quant.export_quantized(f"{path}.{enc}", tree, encoding=enc)
    best = min(sizes, key=sizes.get)
    for enc in encodings:
        if enc == best:
            os.replace(f"{path}.{enc}", path)
        else:
            os.remove(f"{path}.{enc}")
    return best, sizes[best], quant.load_quantized(path)


def measure(
    ctx: Any,
    name: str,
    *,
    qparams: PyTree,
    batch_stats: PyTree,
    weights: dict[str, int],
    acts: dict[str, int] | None,
    dense_bytes: int,
    encodings: tuple[str, ...] = ("dense",),
) -> dict[str, Any]:
    """Exports ``qparams`` (+ calibrated ranges), reads it back, and measures what shipped.

    With ``acts`` the model runs in integers when every width is at most 8 (else
    fake-quantized: ``inference: "fake_quant"``); without, weights are dequantized at load.
    The row's ``(forward, variables)`` go to ``ctx.deployed`` for side-by-side timing.
    """
    tree = {"params": qparams}
    if acts is not None:
        ranges = calibrated_ranges(ctx, quant.dequantize_params(qparams), batch_stats)
        tree["act_ranges"] = {k: np.asarray(v, np.float32) for k, v in ranges.items()}
    encoding, size, shipped = export(ctx, name, tree, encodings=encodings)
    qp = shipped["params"]
    deq = train.variables_of(quant.dequantize_params(qp), batch_stats)
    row: dict[str, Any] = {"name": name}
    if acts is None:
        forward, variables, inference = pruning.forward_of(ctx.model), deq, "float"
    else:
        flat = tree_lib.flatten(shipped["act_ranges"])
        ranges = {k: (float(v[0]), float(v[1])) for k, v in flat.items()}
        forward = fake_quant_forward(ctx, weights, acts, ranges)
        variables, inference = deq, "fake_quant"
        fake_pred = pruning.predictions(ctx, forward, deq)
        if max(*weights.values(), *acts.values()) <= 8:
            fn = quant.int8_apply_fn(ctx.model, act_bits=act_rules(acts), act_ranges=ranges)
            forward = functools.partial(pruning._apply, fn)
            variables, inference = train.variables_of(qp, batch_stats), "int8"
    pred = pruning.predictions(ctx, forward, variables)
    row["test_accuracy"] = float(np.mean(pred == np.asarray(ctx.test_ds.label)))
    if inference == "int8":
        row["agreement_with_fake_quant"] = float(np.mean(pred == fake_pred))
    row.update(
        size_bytes=size,
        compression=dense_bytes / size,
        step_ms=None,
        inference=inference,
        encoding=encoding,
        **coverage(ctx, qp),
        **pruning.counts(ctx, deq["params"]),
    )
    ctx.deployed[name] = (forward, variables)
    return row


def quant_rows(
    ctx: pruning.Context,
    *,
    dense: train.TrainState,
    pruned: train.TrainState | None = None,
    masks: PyTree | None = None,
) -> list[dict[str, Any]]:
    """The rows ``int8_ptq``, ``int8_weights``, ``qat_int4`` (and ``pruned_quantized``).

    Args:
      ctx: the pruning experiment's context.
      dense: the trained dense state (left untouched).
      pruned: the pruned state (finalized params: pruned entries are zero), or None to skip
        ``pruned_quantized``.
      masks: the pruning masks of ``pruned`` (True = kept), held during its QAT.
    """
    q = ctx.s.quant
    bits, end = q.bits, q.first_last_bits
    dense_bytes = tree_lib.tree_bytes(dense.params)
    rows = []

    def add(name: str, timer: common.Timer, fields: dict[str, Any], **kw: Any) -> None:
        row = measure(ctx, name, dense_bytes=dense_bytes, **kw)
        rows.append({**row, **fields, "wall_s": timer()})

    timer = common.Timer()
    ptq = layer_bits(ctx.model, dense.params, bits)
    qp = quantize(ctx, dense.params, ptq)
    kw = {"qparams": qp, "weights": ptq, "batch_stats": dense.batch_stats}
    add("int8_ptq", timer, {"weight_bits": bits, "act_bits": bits, "observer": q.observer},
        acts=ptq, **kw)  # fmt: skip
    add("int8_weights", common.Timer(), {"weight_bits": bits}, acts=None, **kw)

    timer = common.Timer()
    weights = layer_bits(ctx.model, dense.params, q.qat_bits, end_bits=end)
    acts = layer_bits(ctx.model, dense.params, bits, end_bits=end)
    fields = {
        "weight_bits": q.qat_bits,
        "act_bits": bits,
        "first_last_bits": end,
        "qat_steps": q.qat_steps,
    }
    params, stats = qat(ctx, dense.params, dense.batch_stats, weights=weights, acts=acts,
                        phase="qat")  # fmt: skip
    qp = quantize(ctx, params, weights)
    add("qat_int4", timer, fields, qparams=qp, weights=weights, acts=acts, batch_stats=stats)
    if pruned is None:
        return rows

    timer = common.Timer()
    params, stats = qat(ctx, pruned.params, pruned.batch_stats, weights=weights, acts=acts,
                        phase="pruned_qat", masks=masks)  # fmt: skip
    if masks is not None:
        params = prune.finalize(params, masks)
    qp = quantize(ctx, params, weights)
    encodings = quant.ENCODINGS if max(weights.values()) <= 8 else ("dense",)
    add("pruned_quantized", timer, fields, qparams=qp, weights=weights, acts=acts,
        batch_stats=stats, encodings=encodings)  # fmt: skip
    return rows


def validate_quant(s) -> None:
    """Checks the QAT optimizer (the ``quant`` keys themselves are checked when parsed)."""
    if s.quant.qat_steps:
        common.build_optimizer(s, steps=s.quant.qat_steps, learning_rate=s.quant.learning_rate)
