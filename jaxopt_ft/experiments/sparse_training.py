"""Experiment ``sparse_training``: training a model that is never dense, against pruning.

Every run starts from the same initialisation, sees the same batches and trains for
``train.steps`` with the settings' optimizer, one resumable phase ``<method>@<sparsity>``:

- ``dense``: no masks (one run, ``sparsity`` 0);
- ``gradual``: magnitude pruning from dense on Zhu & Gupta's cubic ramp between
  ``sparse.begin_fraction`` and ``sparse.end_fraction`` of the steps;
- ``static``: a random mask (``sparse.distribution``, ERK by default) from initialisation;
- ``set``: SET (Mocanu et al. 2018): every ``sparse.frequency`` steps up to
  ``sparse.update_end_fraction`` of training, drop ``sparse.fraction`` of each layer's
  active weights by magnitude and regrow as many at random;
- ``rigl``: RigL (Evci et al. 2020): the same with regrowth by dense-gradient magnitude and
  the fraction cosine-decayed to 0 at the last update;
- ``ste``: straight-through pruning, a sparse forward pass (top-k of the current weights)
  over dense weights that all train; the final weights are pruned to the same top-k.

Rows: ``name``, ``method``, ``sparsity`` (the target; 0 for dense), ``achieved_sparsity``
(zeros among the prunable weights of the final model), ``test_accuracy``,
``train_flops_vs_dense`` (training FLOPs over dense training's, counted as RigL's Appendix H
counts them: `jaxopt_ft.prune.flops`), ``step_ms`` (mean wall time of a training step
after the first, so without compilation; from the metrics log when a finished phase is
restored). ``accuracy_vs_flops.png`` draws accuracy against training FLOPs.
The FLOPs are the algorithm's: on CPU our masked steps still run dense matrix products.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import prune, report, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common, pruning
from jaxopt_ft.experiments.settings import SparseTrainingSettings as Settings

METHODS = ("dense", "gradual", "static", "set", "rigl", "ste")


def _steps(s: Settings) -> dict[str, int]:
    """The step numbers of the schedules (the wrapper's count is 0 at the first update)."""
    n, p = s.train.steps, s.sparse
    end = min(int(round(p.end_fraction * n)), n - 1)
    return {
        "begin": min(int(round(p.begin_fraction * n)), end),
        "end": end,
        "update_end": max(min(int(round(p.update_end_fraction * n)), n - 1), 1),
    }


def _schedule(s: Settings, method: str, sparsity: float) -> prune.SparsitySchedule | None:
    """When masks change in one run (the wrapper's count is 0 at the first update)."""
    p, st = s.sparse, _steps(s)
    dst = {"fraction": p.fraction, "frequency": p.frequency, "end_step": st["update_end"]}
    build = {
        "gradual": lambda: prune.polynomial(
            final_sparsity=sparsity,
            begin_step=st["begin"],
            end_step=st["end"],
            frequency=p.frequency,
        ),  # fmt: skip
        "static": lambda: prune.constant(sparsity),
        "set": lambda: prune.constant(sparsity, **dst),
        "rigl": lambda: prune.cosine(sparsity, **dst),
    }
    return build[method]() if method in build else None


def _optimizer(s: Settings, method: str, sparsity: float, rules, key: jax.Array):
    """The optimizer of one run: the settings' optimizer, wrapped for the masked methods."""
    inner = common.build_optimizer(s, steps=s.train.steps)
    dist = s.sparse.distribution
    maskers = {
        "gradual": lambda: prune.magnitude(distribution=dist),
        "static": lambda: prune.static(key=key, distribution=dist),
        "set": lambda: prune.set_(key=key, distribution=dist),
        "rigl": lambda: prune.rigl(key=key, distribution=dist),
    }
    if method not in maskers:  # dense, and STE (its masks live in the forward pass)
        return inner
    return prune.wrap(inner, _schedule(s, method, sparsity), maskers[method](), rules=rules)


def _rules(s: Settings, model, params) -> list[tuple[str, bool]]:
    chosen = tree_lib.flatten(pruning.prunable(s.sparse, model, params))
    return [(re.escape(path), keep) for path, keep in chosen.items()]


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    model = common.build_model(s, num_classes=train_ds.num_classes)
    params = pruning.abstract_params(model, train_ds.x)
    rules = _rules(s, model, params)
    for method in s.sparse.methods:
        for sparsity in s.sparse.sparsities:
            _optimizer(s, method, sparsity, rules, common.seed_key(s)).init(params)


def _flops(s: Settings, method: str, sparsity: float, uses: dict[str, Any]) -> float:
    """Training FLOPs over dense training's for one run (`jaxopt_ft.prune.flops`)."""
    n, t = s.train.steps, np.arange(s.train.steps)
    sizes = {p: int(np.size(tree_lib.flatten(uses["params"])[p])) for p in uses["uses"]}

    def f(target: float) -> float:  # forward FLOPs at a target sparsity
        dens = prune.layer_densities(uses["params"], sparsity=target,
                                     distribution=s.sparse.distribution,
                                     prunable=uses["prunable"])  # fmt: skip
        return prune.forward_flops({q: sizes[q] * dens.get(q, 1.0) for q in sizes}, uses["uses"])

    f_d, sched = f(0.0), _schedule(s, method, sparsity)
    if method == "gradual":  # each mask set holds from its update step to the next
        at = np.flatnonzero(np.asarray(sched.is_update_step(t)))
        spans = np.diff(np.append(at, n))
        targets = np.asarray(sched.sparsity(t))[at]
        total = 3.0 * f_d * at[0] + sum(
            3.0 * f(float(x)) * k for x, k in zip(targets, spans, strict=True)
        )
        return total / (3.0 * f_d * n)
    f_s = f_d if method == "dense" else f(sparsity)
    kind = {"dense": "dense", "static": "sparse", "set": "sparse", "rigl": "rigl", "ste": "ste"}
    updates = 0
    if method == "rigl":  # a dense weight gradient wherever RigL regrows
        grows = np.asarray(sched.is_update_step(t)) & (np.asarray(sched.update_fraction(t)) > 0)
        updates = int(np.sum(grows))
    total = (n - updates) * prune.step_flops(f_s, f_d, method=kind[method])
    total += updates * prune.step_flops(f_s, f_d, method="rigl", update_step=True)
    return total / (3.0 * f_d * n)


def _run_one(ctx, s: Settings, method: str, sparsity: float, init, rules, uses) -> dict:
    key = jax.random.fold_in(ctx.keys["prune"], int(round(sparsity * 1000)))
    tx = _optimizer(s, method, sparsity, rules, key)
    params = jax.tree.map(jnp.copy, init.params)  # fit donates the state it trains
    state = train.TrainState.create(
        apply_fn=ctx.model.apply, params=params, tx=tx, batch_stats=init.batch_stats
    )
    if method in ("static", "set", "rigl"):  # sparse from the first forward pass
        state = state.replace(params=prune.apply_masks(params, prune.find_masks(state.opt_state)))
    apply_fn = None
    if method == "ste":
        apply_fn = prune.ste_apply_fn(
            ctx.model.apply, sparsity=sparsity, rules=rules, distribution=s.sparse.distribution
        )
    name = "dense" if method == "dense" else f"{method}@{sparsity:g}"
    batches = common.train_batches(s, ctx.train_ds, batch_size=s.train.batch_size, seed=s.seed)
    state, summary = common.fit_phase(
        s, state, common.classification_step(s, apply_fn=apply_fn), batches,
        workdir=ctx.workdir, phase=name, steps=s.train.steps, key=ctx.keys["dense"],
        progress=ctx.progress,
    )  # fmt: skip
    params = state.params
    if method == "ste":
        prunable = pruning.prunable(s.sparse, ctx.model, params)
        masks = prune.compute_masks(params, sparsity=sparsity, prunable=prunable,
                                    distribution=s.sparse.distribution)  # fmt: skip
        params = prune.apply_masks(params, masks)
    variables = state.replace(params=params).variables()
    return {
        "name": name,
        "method": method,
        "sparsity": 0.0 if method == "dense" else sparsity,
        "achieved_sparsity": pruning.counts(ctx, params)["sparsity"],
        "test_accuracy": pruning.accuracy(ctx, ctx.forward, variables),
        "train_flops_vs_dense": _flops(s, method, sparsity, uses),
        "step_ms": _step_ms(summary),
    }


def _step_ms(summary: dict[str, float]) -> float | None:
    rate = summary.get("train_steps_per_s")
    return None if not rate else 1000.0 / rate


def plot(workdir: str, rows: list[dict[str, Any]]) -> str:
    """Test accuracy against training FLOPs (relative to dense), one line per method."""
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sparsity"])
        xs, ys = [r["train_flops_vs_dense"] for r in mine], [r["test_accuracy"] for r in mine]
        ax.plot(xs, ys, marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs / dense training FLOPs")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    return report.save_plot(fig, workdir, "accuracy_vs_flops.png")


def _uses(ctx, init) -> dict[str, Any]:
    """Weight uses per kernel, the initial params and the prunable selection (for FLOPs)."""
    return {
        "uses": prune.kernel_uses(ctx.model.apply, init.variables(), ctx.train_ds.x[:1]),
        "params": init.params,
        "prunable": pruning.prunable(ctx.s.sparse, ctx.model, init.params),
    }


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    ctx = pruning.make_context(s, workdir, progress=progress, prune_section=s.sparse)
    init = common.new_state(ctx.model, ctx.keys["init"], ctx.train_ds.x[:1], optax.identity())
    rules, uses = _rules(s, ctx.model, init.params), _uses(ctx, init)
    rows = []
    for method in s.sparse.methods:
        for sparsity in [0.0] if method == "dense" else s.sparse.sparsities:
            rows.append(_run_one(ctx, s, method, sparsity, init, rules, uses))
    return common.report(
        s, rows, prunable_params=ctx.prunable_params, plots=[plot(workdir, rows)], wall_s=timer()
    )
