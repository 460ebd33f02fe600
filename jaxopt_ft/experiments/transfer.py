"""Experiment ``transfer``: pretrain on some classes, adapt to others with few labels.

Phase ``pretrain`` trains the model on every training example of ``transfer.pretrain_classes``
(with the top-level optimizer, schedule and ``train`` settings; resumable through ``fit``).
Each mode of ``transfer.modes`` then adapts a copy to ``transfer.target_classes`` from
``transfer.per_class`` labelled examples per class, once per seed of ``transfer.seeds`` (the
seed draws the few-shot subset and the new head), and is evaluated on every test example of the
target classes. Pretrained modes load the checkpoint written by ``pretrain`` (or the one named
by ``transfer.pretrained``) with ``transfer.dont_load`` re-initialised. One row per mode:
mean and standard deviation of ``test_accuracy`` over seeds, the paired margin over ``scratch``
(same subset, same seed), ``trainable_params``, ``frozen_params``, ``opt_state_bytes``,
``step_ms`` (median over seeds) and ``wall_s`` (all seeds).
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxopt_ft import data, finetune, loop, ops, optim, report, timing, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import TransferSettings as Settings
from jaxopt_ft.finetune import features as features_lib
from jaxopt_ft.finetune import lora


def _group_tx(t, learning_rate: float, *, steps: int) -> optax.GradientTransformation:
    schedule = optim.schedule("cosine", learning_rate=learning_rate, steps=steps)
    return optim.make(t.optimizer, learning_rate=schedule, weight_decay=t.weight_decay)


def _labels_and_tx(t, mode: str, params, *, steps: int):
    """The label tree and the partitioned, non-finite-guarded optimizer of one mode."""
    rules = list(t.partial_rules) if mode == "partial" else finetune.mode_rules(mode)
    labels = finetune.freeze_labels(params, rules)
    lr = t.scratch_learning_rate if mode == "scratch" else t.learning_rate
    used = set(jax.tree.leaves(labels)) - {finetune.FROZEN}
    transforms = {g: _group_tx(t, lr * m, steps=steps) for g, m in t.lr_mult.items() if g in used}
    return labels, optim.guard_nonfinite(finetune.optimizer(labels, transforms))


def _fan_in(s: Settings, num_classes: int, x: np.ndarray) -> dict[str, int]:
    """Leading fan-in axes of every kernel (attention: 1 for query/key/value, 2 for out)."""
    model = common.build_model(s, num_classes=num_classes)
    sample = jax.ShapeDtypeStruct((1, *x.shape[1:]), np.float32)
    found = ops.find_ops(model, _abstract(s, num_classes, x), sample, train=False)
    return lora.fan_in_axes(found)


def _mode_params(t, mode: str, params, key, fan_in=None):
    if mode == "lora":
        adapters = lora.init(
            params, targets=list(t.lora_targets), rank=t.lora_rank, key=key, fan_in=fan_in
        )
        return {"base": params, "lora": adapters}
    return params


def _abstract(s: Settings, num_classes: int, x: np.ndarray) -> dict:
    """Shapes of a fresh model's variables, without computing anything."""
    model = common.build_model(s, num_classes=num_classes)
    sample = jax.ShapeDtypeStruct((1, *x.shape[1:]), np.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), sample)


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    t = s.transfer
    num = train_ds.num_classes
    for key in ("pretrain_classes", "target_classes"):
        ids = getattr(t, key)
        if any(c >= num for c in ids):
            raise ValueError(f"transfer.{key}={ids!r} must be distinct class ids in 0..{num - 1}.")
    n_min = min(int(np.sum(train_ds.label == c)) for c in t.target_classes)
    if t.per_class > n_min:
        raise ValueError(
            f"transfer.per_class={t.per_class} exceeds {n_min}, the fewest "
            "training examples of a target class; lower it."
        )
    common.check_batch(s, t.batch_size, "transfer.batch_size")
    target = _abstract(s, len(t.target_classes), train_ds.x)
    if t.pretrained:
        source = finetune.restore_variables(t.pretrained)
    else:
        source = _abstract(s, len(t.pretrain_classes), train_ds.x)
    finetune.load_pretrained(target, source, dont_load=list(t.dont_load))
    fan_in = _fan_in(s, len(t.target_classes), train_ds.x)
    for mode in t.modes:
        if mode != "features":
            params = _mode_params(t, mode, target["params"], jax.random.PRNGKey(0), fan_in)
            _labels_and_tx(t, mode, params, steps=t.steps)


def _pretrain(s: Settings, workdir, train_ds, test_ds, progress) -> tuple[dict, dict]:
    """Pretrains (or reads ``transfer.pretrained``); returns (variables, summary)."""
    t = s.transfer
    if t.pretrained:
        return finetune.restore_variables(t.pretrained), {"source": t.pretrained}
    timer = common.Timer()
    pre_train = data.subset(train_ds, classes=t.pretrain_classes, seed=s.seed)
    pre_test = data.subset(test_ds, classes=t.pretrain_classes, seed=s.seed)
    model = common.build_model(s, num_classes=len(t.pretrain_classes))
    k_init, k_train = jax.random.split(common.seed_key(s))
    state = common.new_state(
        model, k_init, pre_train.x[:1], common.build_optimizer(s, steps=s.train.steps)
    )
    batches = common.train_batches(s, pre_train, batch_size=s.train.batch_size, seed=s.seed)
    state, _ = common.fit_phase(
        s, state, common.classification_step(s), batches, workdir=workdir, phase="pretrain",
        steps=s.train.steps, key=k_train, progress=progress,
    )  # fmt: skip
    summary = {
        "classes": list(t.pretrain_classes),
        "train_examples": len(pre_train.label),
        "steps": s.train.steps,
        "test_accuracy": common.evaluate(s, state.apply_fn, state.variables(), pre_test)[
            "test_accuracy"
        ],
        "wall_s": timer(),
    }
    if workdir:  # adapt from what was saved, as a separate run would
        return finetune.restore_variables(os.path.join(workdir, "checkpoints", "pretrain")), summary
    return {"params": state.params, "batch_stats": state.batch_stats}, summary


class _Context(NamedTuple):
    """What every mode and seed shares: compiled once, used many times."""

    s: Settings
    model: Any  # the target-classes model
    init: Any  # jitted model.init
    source: dict  # pretrained variables
    train_ds: data.Dataset
    test_ds: data.Dataset  # test examples of the target classes
    workdir: str | None
    progress: bool


def _evaluate(ctx: _Context, params, batch_stats) -> float:
    """Accuracy of plain params (LoRA exported): one compiled program per model."""
    variables = train.variables_of(params, batch_stats)
    return common.evaluate(ctx.s, ctx.model.apply, variables, ctx.test_ds)["test_accuracy"]


def _start(ctx: _Context, mode: str, seed: int):
    """Few-shot subset, keys and the initial (pretrained unless scratch) variables."""
    t = ctx.s.transfer
    shot = data.subset(ctx.train_ds, per_class=t.per_class, classes=t.target_classes, seed=seed)
    k_init, k_lora, k_train = jax.random.split(jax.random.PRNGKey(seed), 3)
    variables = dict(ctx.init(k_init, shot.x[:1]))
    variables.setdefault("batch_stats", {})
    if mode != "scratch":
        variables = finetune.load_pretrained(variables, ctx.source, dont_load=list(t.dont_load))
    return shot, variables["params"], variables.get("batch_stats", {}), k_lora, k_train


def _logged_ms(ctx: _Context, phase: str, summary: dict) -> float | None:
    """Milliseconds per step as logged at the last step (before the final checkpoint save)."""
    rate = summary.get("train_steps_per_s")
    if ctx.workdir:
        log = loop.MetricsLog(os.path.join(ctx.workdir, "metrics.jsonl"), phase)
        logged = log.at(ctx.s.transfer.steps)
        if logged and logged.get("steps_per_s"):
            rate = logged["steps_per_s"]
    return 1000.0 / rate if rate and np.isfinite(rate) else None


def _run_mode(ctx: _Context, mode: str) -> list[dict]:
    """Adapts with ``mode`` once per seed (the step compiles once per mode)."""
    t = ctx.s.transfer
    if mode == "features":
        return _features(ctx)
    abstract = _abstract(ctx.s, len(t.target_classes), ctx.train_ds.x)["params"]
    fan_in = _fan_in(ctx.s, len(t.target_classes), ctx.train_ds.x)
    params = _mode_params(t, mode, abstract, jax.random.PRNGKey(0), fan_in)
    labels, tx = _labels_and_tx(t, mode, params, steps=t.steps)
    apply_fn, export = ctx.model.apply, None
    if mode == "lora":
        apply_fn = lora.wrap_apply(ctx.model.apply, alpha=t.lora_alpha)
        export = jax.jit(functools.partial(lora.export, alpha=t.lora_alpha))
    step_fn = train.make_train_step(
        trainable=finetune.trainable_mask(labels),
        axis_name=common.strategy(ctx.s).axis_name,
    )
    results = []
    for seed in t.seeds:
        shot, params, batch_stats, k_lora, k_train = _start(ctx, mode, seed)
        state = train.TrainState.create(
            apply_fn=apply_fn, params=_mode_params(t, mode, params, k_lora, fan_in), tx=tx,
            batch_stats=batch_stats,
        )  # fmt: skip
        phase = f"{mode}_seed{seed}"
        batches = common.train_batches(ctx.s, shot, batch_size=t.batch_size, seed=seed)
        state, summary = common.fit_phase(
            ctx.s, state, step_fn, batches,
            workdir=ctx.workdir, phase=phase, steps=t.steps, key=k_train, progress=ctx.progress,
        )  # fmt: skip
        trainable, frozen = finetune.count_trainable(state.params, labels)
        plain = export(state.params) if export else state.params
        results.append(
            {
                "test_accuracy": _evaluate(ctx, plain, state.batch_stats),
                "trainable_params": trainable,
                "frozen_params": frozen,
                "opt_state_bytes": tree_lib.tree_bytes(state.opt_state),
                "step_ms": _logged_ms(ctx, phase, summary),
            }
        )
    return results


def _features(ctx: _Context) -> list[dict]:
    """Frozen trunk once over each few-shot set, then the head on the cached features."""
    t = ctx.s.transfer
    num_classes, n_shot = len(t.target_classes), t.per_class * len(t.target_classes)
    if t.features_solver == "ridge":
        solve = jax.jit(
            functools.partial(features_lib.ridge_head, num_classes=num_classes, l2=t.features_l2)
        )
    else:
        tx = _group_tx(t, t.learning_rate, steps=t.steps)
        head_steps = features_lib.head_trainer(tx, steps=t.steps, num_examples=n_shot)
    results = []
    for seed in t.seeds:
        shot, params, batch_stats, _, k_train = _start(ctx, "features", seed)
        feats = features_lib.extract(
            ctx.model.apply, train.variables_of(params, batch_stats), shot.x
        )
        if t.features_solver == "ridge":
            call, steps = functools.partial(solve, feats, shot.label), 1
        else:
            head = dict(params["head"])
            args = (head, tx.init(head), feats, shot.label, k_train)
            call, steps = functools.partial(head_steps, *args), t.steps
        out = jax.block_until_ready(call())
        # All head steps are one compiled call; time it once more (the first call compiled).
        step_ms = timing.time_side_by_side({"head": call}, repeats=1, warmup=0)["head"] / steps
        head, opt_state = (out, {}) if t.features_solver == "ridge" else out[:2]
        n_head = tree_lib.count_params(head)
        results.append(
            {
                "test_accuracy": _evaluate(ctx, {**params, "head": head}, batch_stats),
                "trainable_params": n_head,
                "frozen_params": tree_lib.count_params(params) - n_head,
                "opt_state_bytes": tree_lib.tree_bytes(opt_state),
                "step_ms": step_ms,
            }
        )
    return results


def _plot(workdir: str, rows: list[dict]) -> str:
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["name"] for r in rows]
    ax.bar(names, [r["test_accuracy"] for r in rows], yerr=[r["test_accuracy_std"] for r in rows])
    ax.set_ylabel("test accuracy (target classes)")
    ax.set_ylim(0, 1)
    return report.save_plot(fig, workdir, "transfer.png", legend=False)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    t = s.transfer
    train_ds = common.load_split(s, "train")
    test_ds = common.load_split(s, "test")
    source, pre_summary = _pretrain(s, workdir, train_ds, test_ds, progress)
    model = common.build_model(s, num_classes=len(t.target_classes))
    target_test = data.subset(test_ds, classes=t.target_classes, seed=0)
    init = jax.jit(functools.partial(model.init, train=False))
    ctx = _Context(s, model, init, source, train_ds, target_test, workdir, progress)
    per_seed, rows = {}, []
    for mode in t.modes:
        timer = common.Timer()
        results = _run_mode(ctx, mode)
        accs = [r["test_accuracy"] for r in results]
        per_seed[mode] = accs
        times = [r["step_ms"] for r in results if r["step_ms"] is not None]
        rows.append(
            {
                "name": mode,
                "test_accuracy": float(np.mean(accs)),
                "test_accuracy_std": float(np.std(accs)),
                "trainable_params": results[0]["trainable_params"],
                "frozen_params": results[0]["frozen_params"],
                "opt_state_bytes": results[0]["opt_state_bytes"],
                "step_ms": float(np.median(times)) if times else None,
                "wall_s": timer(),
            }
        )
    if "scratch" in per_seed:
        for row in rows:
            diff = np.subtract(per_seed[row["name"]], per_seed["scratch"])
            row["vs_scratch"] = float(np.mean(diff))
            row["vs_scratch_std"] = float(np.std(diff))
    out = common.report(
        s,
        rows,
        pretrain=pre_summary,
        target_classes=list(t.target_classes),
        per_class=t.per_class,
        test_examples=len(target_test.label),
        seeds=list(t.seeds),
        per_seed_accuracy=per_seed,
    )
    if workdir:
        out["plots"] = [_plot(workdir, rows)]
    return out
