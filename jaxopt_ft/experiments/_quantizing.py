"""Quantized models from already-trained states: the quantization rows of ``compress``.

The ``quant`` section of a config (every key optional, defaults in :data:`DEFAULTS`):

- ``bits`` (8): weight width of ``int8_ptq`` / ``int8_weights``, and the activation width of
  every row that quantizes activations;
- ``qat_bits`` (4): weight width of the QAT rows (``qat_int4``, ``pruned_quantized``);
- ``first_last_bits`` (8): weight and activation width of the first and last Dense/Conv layers
  in the QAT rows (the most sensitive ones); 0 quantizes them like the others;
- ``qat_steps`` (100), ``learning_rate`` (1e-3): the fine-tune of each QAT phase, with the
  config's optimizer and schedule; 0 steps makes those rows plain PTQ at the same widths;
- ``calibration_batches`` (10): training batches (``train.batch_size`` each) that set the
  activation ranges; ``observer`` (``"minmax"``): how they are folded (``quant.OBSERVERS``).

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
``"fake_quant"`` when a width above 8 rules the integer path out.

Every row has ``test_accuracy``, ``size_bytes`` (the file on disk, activation ranges included),
``compression`` (dense float32 bytes / ``size_bytes``), ``params``, ``nonzero_params`` and
``step_ms`` (median ms of one jitted call on ``eval.batch_size`` test inputs). When ``ctx`` has
a ``deployed`` dict (``_pruning.Context``), each row registers its ``(forward, variables)``
there and leaves ``step_ms`` to the experiment's side-by-side timing (``_pruning.time_rows``).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxopt_ft import data, parallel, prune, quant, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import _pruning, common
from jaxopt_ft.quant import core as quant_core
from jaxopt_ft.quant import layers as quant_layers

PyTree = Any

DEFAULTS: dict[str, Any] = {
    "bits": 8,
    "qat_bits": 4,
    "first_last_bits": 8,
    "qat_steps": 100,
    "learning_rate": 1e-3,
    "calibration_batches": 10,
    "observer": "minmax",
}


def quant_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The ``quant`` config section with :data:`DEFAULTS` (``overrides`` replace some)."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown quant keys {sorted(unknown)}; accepted: {sorted(DEFAULTS)}.")
    return ml_collections.ConfigDict({**DEFAULTS, **overrides})


def quant_settings(config) -> dict[str, Any]:
    """Reads and checks the ``quant`` section (missing keys take :data:`DEFAULTS`).

    Raises:
      ValueError: a bad value, named with its key and the accepted values.
    """
    s = {k: common.get(config, f"quant.{k}", v) for k, v in DEFAULTS.items()}
    for key in ("bits", "qat_bits"):
        quant_core.check_bits(s[key], what=f"quant.{key}")
    if s["first_last_bits"] != 0:
        quant_core.check_bits(s["first_last_bits"], what="quant.first_last_bits (or 0)")
    for key, minimum in (("qat_steps", 0), ("calibration_batches", 1)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"quant.{key} must be an integer >= {minimum}, got {v!r}.")
    lr = s["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 100:
        raise ValueError(f"quant.learning_rate must be in (0, 100], got {lr!r}.")
    if s["observer"] not in quant.OBSERVERS:
        raise ValueError(
            f"quant.observer={s['observer']!r} is not accepted; choose one of: "
            f"{', '.join(quant.OBSERVERS)}."
        )
    return s


def validate_quant(config) -> dict[str, Any]:
    """Checks the ``quant`` section before any work; returns :func:`quant_settings`.

    Raises:
      ValueError: bits outside 2-16, calibration batches < 1, an unknown observer, ...
    """
    s = quant_settings(config)
    if s["qat_steps"]:
        common.build_optimizer(config, steps=s["qat_steps"], learning_rate=s["learning_rate"])
    return s


def layer_bits(params: PyTree, bits: int, *, end_bits: int = 0) -> dict[str, int]:
    """``{layer path: bits}`` for the Dense/Conv layers, first and last at ``end_bits`` (if > 0)."""
    layers = quant_layers.layer_paths(params)
    out = dict.fromkeys(layers, bits)
    if end_bits and layers:
        out[layers[0]] = out[layers[-1]] = end_bits
    return out


def weight_rules(per_layer: dict[str, int]) -> list[tuple[str, int | None]]:
    """Rules quantizing each layer's kernel at its width and keeping every other leaf float."""
    rules: list[tuple[str, int | None]] = [
        (re.escape(f"{p}/kernel" if p else "kernel"), b) for p, b in per_layer.items()
    ]
    return rules + [(".*", None)]


def act_rules(per_layer: dict[str, int]) -> list[tuple[str, int | None]]:
    """Rules giving each layer's input its width."""
    return [(re.escape(p), b) for p, b in per_layer.items()]


class Setup(NamedTuple):
    """What the quantization rows need; ``_pruning.Context`` has the same attributes."""

    config: Any
    workdir: str
    progress: bool
    model: Any
    train_ds: data.Dataset
    test_ds: data.Dataset


def calibration_inputs(ctx: Any, n: int) -> list[np.ndarray]:
    """The first ``n`` training batches' inputs (the training order of ``config.seed``)."""
    it = data.train_batches(
        ctx.train_ds,
        batch_size=common.get(ctx.config, "train.batch_size"),
        seed=common.get(ctx.config, "seed"),
    )
    return [next(it)["x"] for _ in range(n)]


def predictions(ctx: Any, fwd: Callable, variables: PyTree) -> np.ndarray:
    """Arg-max predictions of the jitted ``fwd(variables, x)`` on the whole test split."""
    out = []
    for batch in common.eval_batches(ctx.config, ctx.test_ds):
        pred = np.asarray(jnp.argmax(fwd(variables, batch["x"]), -1))
        out.append(pred[np.asarray(batch["mask"]) > 0])
    return np.concatenate(out)


def step_ms(ctx: Any, fwd: Callable, variables: PyTree) -> float:
    """Median milliseconds of one compiled ``fwd`` call on ``eval.batch_size`` test inputs."""
    n = min(common.get(ctx.config, "eval.batch_size", 1000), len(ctx.test_ds.label))
    x = jax.device_put(jnp.asarray(ctx.test_ds.x[:n]))
    jax.block_until_ready(fwd(variables, x))
    times = []
    for _ in range(common.get(ctx.config, "eval.timing_repeats", 5)):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(variables, x))
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def variables_of(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    """``{"params": ...}`` plus ``batch_stats`` when the model has any."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def calibrated_ranges(
    ctx: Any, params: PyTree, batch_stats: PyTree
) -> dict[str, tuple[float, float]]:
    """Input ranges of every layer of the model with (dequantized) ``params``, per the config."""
    s = quant_settings(ctx.config)
    inputs = calibration_inputs(ctx, s["calibration_batches"])
    variables = variables_of(params, batch_stats)
    return quant.calibrate(ctx.model, variables, inputs, observer=s["observer"], train=False)


def _apply(apply_fn: Callable, variables: PyTree, x: jax.Array) -> jax.Array:
    return apply_fn(variables, x, train=False)


def fake_quant_forward(
    ctx: Any,
    weights: dict[str, int],
    acts: dict[str, int] | None,
    ranges: dict[str, tuple[float, float]] | None,
) -> Callable:
    """Jitted ``(variables, x) -> logits`` with fake-quantized weights and layer inputs."""
    fn = quant.fake_quant_apply_fn(
        ctx.model,
        weight_bits=weight_rules(weights),
        act_bits=None if acts is None else act_rules(acts),
        act_ranges=ranges,
    )
    return jax.jit(lambda v, x: fn(v, x, train=False))


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
    s = quant_settings(ctx.config)
    steps = s["qat_steps"]
    if not steps:
        return params, batch_stats
    tx = common.build_optimizer(ctx.config, steps=steps, learning_rate=s["learning_rate"])
    if masks is not None:
        tx = prune.wrap(tx, masks=jax.tree.map(jnp.copy, masks))  # opt_state is donated too
    apply_fn = quant.fake_quant_apply_fn(
        ctx.model,
        weight_bits=weight_rules(weights),
        act_bits=None if acts is None else act_rules(acts),
        axis_name=common.strategy(ctx.config).axis_name,  # pmap: ranges over all devices
    )
    state = train.TrainState.create(
        apply_fn=ctx.model.apply,
        params=jax.tree.map(jnp.copy, params),  # fit donates the state it trains
        tx=tx,
        batch_stats=batch_stats,
    )
    step_fn = train.make_train_step(
        label_smoothing=common.get(ctx.config, "train.label_smoothing", 0.0), apply_fn=apply_fn
    )
    key = jax.random.fold_in(common.seed_key(ctx.config), zlib.crc32(phase.encode()))
    state, _ = common.fit(
        ctx.config, state, step_fn, ctx.train_ds, workdir=ctx.workdir, phase=phase,
        steps=steps, key=key, progress=ctx.progress,
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
    """
    tree = {"params": qparams}
    if acts is not None:
        ranges = calibrated_ranges(ctx, quant.dequantize_params(qparams), batch_stats)
        tree["act_ranges"] = {k: np.asarray(v, np.float32) for k, v in ranges.items()}
    encoding, size, shipped = export(ctx, name, tree, encodings=encodings)
    qp = shipped["params"]
    deq = variables_of(quant.dequantize_params(qp), batch_stats)
    row: dict[str, Any] = {"name": name}
    if acts is None:
        forward = functools.partial(_apply, ctx.model.apply)
        variables, inference = deq, "float"
    else:
        flat = tree_lib.flatten(shipped["act_ranges"])
        ranges = {k: (float(v[0]), float(v[1])) for k, v in flat.items()}
        fake = quant.fake_quant_apply_fn(
            ctx.model, weight_bits=weight_rules(weights), act_bits=act_rules(acts),
            act_ranges=ranges,
        )  # fmt: skip
        forward = functools.partial(_apply, fake)
        variables, inference = deq, "fake_quant"
        fake_pred = predictions(ctx, jax.jit(forward), deq)
        if max(*weights.values(), *acts.values()) <= 8:
            fn = quant.int8_apply_fn(ctx.model, act_bits=act_rules(acts), act_ranges=ranges)
            forward = functools.partial(_apply, fn)
            variables, inference = variables_of(qp, batch_stats), "int8"
    fwd = jax.jit(forward)
    pred = predictions(ctx, fwd, variables)
    row["test_accuracy"] = float(np.mean(pred == np.asarray(ctx.test_ds.label)))
    if inference == "int8":
        row["agreement_with_fake_quant"] = float(np.mean(pred == fake_pred))
    row.update(
        params=tree_lib.count_params(deq["params"]),
        nonzero_params=tree_lib.count_nonzero(deq["params"]),
        size_bytes=size,
        compression=dense_bytes / size,
        step_ms=None,
        inference=inference,
        encoding=encoding,
    )
    if hasattr(ctx, "prunable"):  # a pruning experiment: sparsity over its prunable weights
        row.update(_pruning.counts(ctx, deq["params"]))
    deployed = getattr(ctx, "deployed", None)
    if deployed is None:
        row["step_ms"] = step_ms(ctx, fwd, variables)
    else:  # timed side by side with the other rows by the experiment
        deployed[name] = (forward, variables)
    return row


def quant_rows(
    ctx: Any,
    *,
    dense: train.TrainState,
    pruned: train.TrainState | None = None,
    masks: PyTree | None = None,
) -> list[dict[str, Any]]:
    """The rows ``int8_ptq``, ``int8_weights``, ``qat_int4`` (and ``pruned_quantized``).

    Args:
      ctx: a ``_pruning.Context`` or :class:`Setup` (config, workdir, progress, model,
        train_ds, test_ds).
      dense: the trained dense state (left untouched).
      pruned: the pruned state (finalized params: pruned entries are zero), or None to skip
        ``pruned_quantized``.
      masks: the pruning masks of ``pruned`` (True = kept), held during its QAT.

    Returns:
      One row per quantized model (see the module docstring).
    """
    s = quant_settings(ctx.config)
    bits, end = s["bits"], s["first_last_bits"]
    dense_bytes = tree_lib.tree_bytes(dense.params)
    rows = []

    def add(name: str, timer: common.Timer, fields: dict[str, Any], **kw: Any) -> None:
        row = measure(ctx, name, dense_bytes=dense_bytes, **kw)
        rows.append({**row, **fields, "wall_s": timer()})

    timer = common.Timer()
    ptq = layer_bits(dense.params, bits)
    qp = quant.quantize_params(dense.params, weight_rules(ptq))
    kw = {"qparams": qp, "weights": ptq, "batch_stats": dense.batch_stats}
    add("int8_ptq", timer, {"weight_bits": bits, "act_bits": bits, "observer": s["observer"]},
        acts=ptq, **kw)  # fmt: skip
    add("int8_weights", common.Timer(), {"weight_bits": bits}, acts=None, **kw)

    timer = common.Timer()
    weights = layer_bits(dense.params, s["qat_bits"], end_bits=end)
    acts = layer_bits(dense.params, bits, end_bits=end)
    fields = {
        "weight_bits": s["qat_bits"],
        "act_bits": bits,
        "first_last_bits": end,
        "qat_steps": s["qat_steps"],
    }
    params, stats = qat(ctx, dense.params, dense.batch_stats, weights=weights, acts=acts,
                        phase="qat")  # fmt: skip
    qp = quant.quantize_params(params, weight_rules(weights))
    add("qat_int4", timer, fields, qparams=qp, weights=weights, acts=acts, batch_stats=stats)
    if pruned is None:
        return rows

    timer = common.Timer()
    params, stats = qat(ctx, pruned.params, pruned.batch_stats, weights=weights, acts=acts,
                        phase="pruned_qat", masks=masks)  # fmt: skip
    if masks is not None:
        params = prune.finalize(params, masks)
    qp = quant.quantize_params(params, weight_rules(weights))
    encodings = quant.ENCODINGS if max(weights.values()) <= 8 else ("dense",)
    add("pruned_quantized", timer, fields, qparams=qp, weights=weights, acts=acts,
        batch_stats=stats, encodings=encodings)  # fmt: skip
    return rows
