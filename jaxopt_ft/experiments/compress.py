"""Experiment ``compress``: train dense, prune gradually, prune channels; compare what ships.

Phases (each resumable, checkpoints under ``workdir/checkpoints/<phase>``):

1. ``dense``: train the model with the top-level optimizer, schedule and ``train`` settings.
2. ``prune``: fine-tune the dense weights for ``prune.steps`` steps under ``prune.wrap``:
   gradual pruning (Zhu & Gupta's cubic schedule) from 0 to ``prune.sparsity`` between
   ``prune.begin_fraction`` and ``prune.end_fraction`` of the phase, masks recomputed every
   ``prune.frequency`` steps, with the learning rate decaying from ``prune.learning_rate``
   (``prune.schedule``) so the sparse network settles.
3. ``structured``: remove the lowest-norm (``prune.structured_norm``) fraction
   ``prune.structured_sparsity`` of each layer's units (conv channels, hidden neurons) of the
   dense model, or per layer ``prune.structured_rules`` = ``((regex over layer names,
   fraction), ...)`` when not empty, compact it into a narrower model, and fine-tune that for
   ``prune.structured_steps`` steps.

Rows (one per deployable model):

- ``test_accuracy``: on the whole test split.
- ``params``: parameters of the deployed model; ``nonzero_params``: those that are non-zero.
- ``sparsity``: zero or removed entries of the prunable weights (the kernels ``prune.rules``,
  ``prune.exclude_first`` and ``prune.exclude_last`` select in the dense model), as a fraction
  of the dense model's prunable weights; ``prunable_params`` at the top level is that count.
- ``size_bytes``: bytes of the deployable artifact: the float32 params for ``dense`` and for
  the compacted ``structured`` model, the sparse export (``prune.export_sparse``, bitmask or
  indices plus non-zero float32 values) measured on disk for ``pruned``.
- ``step_ms``: median wall-clock milliseconds of one jitted inference call on a batch of
  ``eval.batch_size`` test examples, over ``eval.timing_repeats`` rounds in which all rows'
  models take turns (after compilation), so they are compared under the same machine load.
  The ``pruned`` model is timed as it runs after loading its export: dense kernels holding
  zeros, because XLA has no sparse kernels on CPU; only the compacted model is smaller to run.

Each row comes from a small function taking the shared :class:`pruning.Context` and the states
it needs (``pruning.dense_phase``, ``pruned_phase``, ``structured_phase``) and builds its row
with ``pruning.row``, so further rows (e.g. quantized models) can be added from the same
trained states; ``run`` times every registered row at the end (``pruning.time_rows``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_ft import prune, report, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common, pruning, quantizing
from jaxopt_ft.experiments.pruning import Context
from jaxopt_ft.experiments.settings import CompressSettings as Settings

PyTree = Any


def _structured_target(s: Settings) -> float | list[tuple[str, float]]:
    """``prune.structured_rules`` when given, else the one ``prune.structured_sparsity``."""
    return list(s.prune.structured_rules) or s.prune.structured_sparsity


def _check_structured(s: Settings, groups: list) -> None:
    """Every group keeps a unit: removing all heads (or units) of a block is no model."""
    p = s.prune
    names = {g.name: 0 for g in groups}
    if p.structured_rules:
        fractions = tree_lib.match_rules(
            names, list(p.structured_rules), what="prune.structured_rules", default=0.0
        )
    else:
        fractions = dict.fromkeys(names, p.structured_sparsity)
    for g in groups:
        removed = prune.num_removed(float(fractions[g.name]), g.size)
        if removed >= g.size:
            key = "prune.structured_rules" if p.structured_rules else "prune.structured_sparsity"
            raise ValueError(
                f"{key}: fraction {fractions[g.name]} removes {removed} of the {g.size} units of "
                f"group {g.name!r}, which would leave it empty. Fix: remove at most "
                f"{g.size - 1} of {g.size} (a fraction of {(g.size - 1) / g.size:.3g} or less)."
            )


def validate(s: Settings) -> None:
    """Surfaces the pruning library's errors before any training."""
    train_ds = common.validate_common(s)
    quantizing.validate_quant(s)
    model = common.build_model(s, num_classes=train_ds.num_classes)
    params = pruning.abstract_params(model, train_ds.x)
    p = s.prune
    tx = pruning.pruning_optimizer(
        s, model, params, steps=p.steps, key=jax.random.PRNGKey(0), sparsity=p.sparsity,
        scorer=p.scorer, scope=p.scope, distribution=p.distribution,
    )  # fmt: skip
    jax.eval_shape(tx.init, params)
    groups = prune.unit_groups(model, params)  # models without unit groups fail here
    _check_structured(s, groups)
    if p.structured_steps:
        common.build_optimizer(
            s, steps=p.structured_steps, learning_rate=p.structured_learning_rate,
            schedule=p.schedule,
        )  # fmt: skip


def pruned_phase(ctx: Context, dense: train.TrainState) -> tuple[train.TrainState, PyTree, dict]:
    """The ``prune`` phase; returns (state with finalized params, masks, ``pruned`` row).

    The row evaluates the params read back from the sparse export, i.e. what ships.
    """
    timer = common.Timer()
    p = ctx.s.prune
    state, masks = pruning.prune_from(
        ctx, dense, phase="prune", steps=p.steps, key=ctx.keys["prune"], sparsity=p.sparsity,
        scorer=p.scorer, scope=p.scope, distribution=p.distribution,
    )  # fmt: skip
    path = os.path.join(ctx.workdir, "pruned.npz")
    size = prune.export_sparse(state.params, path, format=p.export_format)
    shipped = jax.tree.map(jnp.asarray, prune.load_sparse(path, like=state.params))
    out = pruning.row(
        ctx, "pruned", forward=ctx.forward, variables=state.variables(shipped),
        params=shipped, size_bytes=size, wall_s=timer(),
    )  # fmt: skip
    return state, masks, out


def structured_phase(
    ctx: Context, dense: train.TrainState
) -> tuple[train.TrainState, prune.Compacted, dict]:
    """Channel pruning of ``dense``, compaction, fine-tuning (phase ``structured``).

    Returns (fine-tuned compact state, the :class:`prune.Compacted` before fine-tuning, row).
    """
    timer = common.Timer()
    p = ctx.s.prune
    masks = prune.structured_masks(
        ctx.model, dense.params, sparsity=_structured_target(ctx.s), norm=p.structured_norm
    )
    small = prune.compact(ctx.model, dense.params, masks, batch_stats=dense.batch_stats or None)
    steps = p.structured_steps
    tx = common.build_optimizer(
        ctx.s, steps=max(steps, 1), learning_rate=p.structured_learning_rate, schedule=p.schedule
    )
    state = train.TrainState.create(
        apply_fn=small.model.apply, params=small.params, tx=tx,
        batch_stats=small.batch_stats or {},
    )  # fmt: skip
    if steps:
        state, _ = pruning.fit_phase(
            ctx, state, phase="structured", steps=steps, key=ctx.keys["structured"]
        )
    out = pruning.row(
        ctx, "structured", forward=pruning.forward_of(small.model), variables=state.variables(),
        params=state.params, size_bytes=tree_lib.tree_bytes(state.params), wall_s=timer(),
    )  # fmt: skip
    return state, small, out


def layer_summary(ctx: Context, params: PyTree, masks: PyTree) -> list[dict[str, Any]]:
    """``prune.summary`` rows of the weight matrices (ndim >= 2) and the prunable total."""
    chosen = pruning.prunable(ctx.s.prune, ctx.model, params)
    rows = prune.summary(params, masks, prunable=chosen)
    keep = [r for r in rows if len(r["shape"]) >= 2 or r["name"] == "total (prunable)"]
    return [{**r, "shape": list(r["shape"])} for r in keep]


def plot_layer_sparsity(workdir: str, rows: list[dict[str, Any]]) -> str:
    """Bar chart of per-layer sparsity from :func:`layer_summary`; returns the file name."""
    plt = report.pyplot()
    layers = [r for r in rows if not r["name"].startswith("total")]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["name"].removesuffix("/kernel") for r in layers]
    bars = ax.bar(names, [r["sparsity"] for r in layers], color="tab:blue")
    for bar, r in zip(bars, layers, strict=True):
        text = f"{r['sparsity']:.1%}\n{r['nonzero']:,} / {r['params']:,} kept"
        if not r["prunable"]:
            text = "excluded\n" + text
        inside = r["sparsity"] > 0.3
        ax.annotate(
            text, (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2 if inside else 0),
            xytext=(0, 0 if inside else 3), textcoords="offset points", ha="center",
            va="center" if inside else "bottom", fontsize=7,
            color="white" if inside else "black",
        )  # fmt: skip
    total = [r for r in rows if r["name"] == "total (prunable)"]
    if total:
        ax.axhline(total[0]["sparsity"], color="k", ls="--", lw=1, label="all prunable weights")
        ax.legend(loc="upper left", fontsize=8)  # placed by hand: save_plot's legend=False
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("sparsity (zeros / weights)")
    ax.set_title("per-layer sparsity of the pruned model", fontsize=9)
    return report.save_plot(fig, workdir, "layer_sparsity.png", legend=False)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    ctx = pruning.make_context(s, workdir, progress=progress)
    dense, dense_row = pruning.dense_phase(ctx)
    pruned, masks, pruned_row = pruned_phase(ctx, dense)
    _, small, structured_row = structured_phase(ctx, dense)
    rows = [dense_row, pruned_row, structured_row]
    rows += quantizing.quant_rows(ctx, dense=dense, pruned=pruned, masks=masks)
    pruning.time_rows(ctx, rows)
    layers = layer_summary(ctx, pruned.params, masks)
    return common.report(
        s,
        rows,
        prunable_params=ctx.prunable_params,
        layer_sparsity=layers,
        structured_kept_units={k: int(v.size) for k, v in small.kept.items()},
        plots=[plot_layer_sparsity(workdir, layers)],
        wall_s=timer(),
    )
