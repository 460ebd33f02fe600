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
import json
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxopt_ft import data, finetune, optim, report, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common
from jaxopt_ft.finetune import features as features_lib
from jaxopt_ft.finetune import lora

SOLVERS = ("logistic", "ridge")


def _classes(config, key: str, num: int) -> tuple[int, ...]:
    value = common.get(config, key)
    ids = tuple(value) if isinstance(value, (list, tuple)) else ()
    ok = all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num for c in ids)
    if not ids or len(set(ids)) != len(ids) or not ok:
        raise ValueError(f"{key}={value!r} must be distinct class ids in 0..{num - 1}.")
    return ids


def _strings(config, key: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    value = common.get(config, key)
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if not ok or not (value or allow_empty):
        raise ValueError(f"{key} must be a non-empty list of strings, got {value!r}.")
    return tuple(value)


def _rules(config, key: str) -> list[tuple[str, str]]:
    value = common.get(config, key)
    ok = isinstance(value, (list, tuple)) and value
    if not ok or not all(isinstance(r, (list, tuple)) and len(r) == 2 for r in value):
        raise ValueError(
            f"{key} must be a non-empty list of (regex, label) pairs, got {value!r}; e.g. "
            "(('conv1/.*', 'frozen'), ('head/.*', 'head'), ('.*', 'trunk'))."
        )
    return [(str(rx), str(label)) for rx, label in value]


def _settings(config) -> dict:
    """Reads and checks the ``transfer`` section; raises ValueError naming bad values."""
    num = data.num_classes(common.get(config, "dataset.name"), data_dir=common.data_dir(config))
    s = {
        "pretrain_classes": _classes(config, "transfer.pretrain_classes", num),
        "target_classes": _classes(config, "transfer.target_classes", num),
        "per_class": common.check_int(config, "transfer.per_class", minimum=1),
        "steps": common.check_int(config, "transfer.steps", minimum=1),
        "batch_size": common.check_int(config, "transfer.batch_size", minimum=1),
        "optimizer": common.check_choice(config, "transfer.optimizer", optim.OPTIMIZERS),
        "learning_rate": common.check_float(config, "transfer.learning_rate", low=0, high=10),
        "scratch_learning_rate": common.check_float(
            config, "transfer.scratch_learning_rate", low=0, high=10
        ),
        "weight_decay": common.check_float(
            config, "transfer.weight_decay", low=0, high=1, closed_low=True
        ),
        "dont_load": _strings(config, "transfer.dont_load", allow_empty=True),
        "partial_rules": _rules(config, "transfer.partial_rules"),
        "lora_targets": _strings(config, "transfer.lora_targets"),
        "lora_rank": common.check_int(config, "transfer.lora_rank", minimum=1),
        "lora_alpha": common.check_float(config, "transfer.lora_alpha", low=0, high=1e4),
        "features_solver": common.check_choice(config, "transfer.features_solver", SOLVERS),
        "features_l2": common.check_float(config, "transfer.features_l2", low=0, high=1e8),
        "pretrained": common.get(config, "transfer.pretrained", "") or "",
    }
    modes = _strings(config, "transfer.modes")
    bad = [m for m in modes if m not in finetune.MODES]
    if bad or len(set(modes)) != len(modes):
        raise ValueError(
            f"transfer.modes={modes!r} must be distinct modes among: {', '.join(finetune.MODES)}."
        )
    s["modes"] = modes
    seeds = common.get(config, "transfer.seeds")
    if not (isinstance(seeds, (list, tuple)) and seeds) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds
    ):
        raise ValueError(f"transfer.seeds={seeds!r} must be a non-empty list of integers >= 0.")
    s["seeds"] = tuple(seeds)
    mult = common.get(config, "transfer.lr_mult")
    mult = dict(mult.to_dict() if hasattr(mult, "to_dict") else mult)
    for k, v in mult.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"transfer.lr_mult.{k}={v!r} must be a number > 0.")
    s["lr_mult"] = mult
    n_shot = s["per_class"] * len(s["target_classes"])
    if s["batch_size"] > n_shot:
        raise ValueError(
            f"transfer.batch_size={s['batch_size']} exceeds the {n_shot} few-shot examples "
            f"({s['per_class']} x {len(s['target_classes'])} classes); lower it."
        )
    return s


def _group_tx(s: dict, learning_rate: float, *, steps: int) -> optax.GradientTransformation:
    schedule = optim.schedule("cosine", learning_rate=learning_rate, steps=steps)
    return optim.make(s["optimizer"], learning_rate=schedule, weight_decay=s["weight_decay"])


def _labels_and_tx(s: dict, mode: str, params, *, steps: int):
    """The label tree and the partitioned optimizer of one mode."""
    rules = s["partial_rules"] if mode == "partial" else finetune.mode_rules(mode)
    labels = finetune.freeze_labels(params, rules)
    lr = s["scratch_learning_rate"] if mode == "scratch" else s["learning_rate"]
    used = set(jax.tree.leaves(labels)) - {finetune.FROZEN}
    transforms = {
        g: _group_tx(s, lr * m, steps=steps) for g, m in s["lr_mult"].items() if g in used
    }
    return labels, finetune.optimizer(labels, transforms)


def _mode_params(s: dict, mode: str, params, key):
    if mode == "lora":
        adapters = lora.init(params, targets=s["lora_targets"], rank=s["lora_rank"], key=key)
        return {"base": params, "lora": adapters}
    return params


def _abstract(config, num_classes: int, x: np.ndarray) -> dict:
    """Shapes of a fresh model's variables, without computing anything."""
    model = common.build_model(config, num_classes=num_classes)
    sample = jax.ShapeDtypeStruct((1, *x.shape[1:]), np.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), sample)


def validate(config) -> None:
    common.validate_common(config)
    s = _settings(config)
    train_ds = common.load_split(config, "train")
    n_min = min(int(np.sum(train_ds.label == c)) for c in s["target_classes"])
    if s["per_class"] > n_min:
        raise ValueError(
            f"transfer.per_class={s['per_class']} exceeds {n_min}, the fewest "
            "training examples of a target class; lower it."
        )
    common.check_batch(config, s["batch_size"], "transfer.batch_size")
    target = _abstract(config, len(s["target_classes"]), train_ds.x)
    if s["pretrained"]:
        source = finetune.restore_variables(s["pretrained"])
    else:
        source = _abstract(config, len(s["pretrain_classes"]), train_ds.x)
    finetune.load_pretrained(target, source, dont_load=s["dont_load"])
    for mode in s["modes"]:
        if mode != "features":
            params = _mode_params(s, mode, target["params"], jax.random.PRNGKey(0))
            _labels_and_tx(s, mode, params, steps=s["steps"])


def _pretrain(config, s, workdir, train_ds, test_ds, progress) -> tuple[dict, dict]:
    """Pretrains (or reads ``transfer.pretrained``); returns (variables, summary)."""
    if s["pretrained"]:
        return finetune.restore_variables(s["pretrained"]), {"source": s["pretrained"]}
    timer = common.Timer()
    seed = common.get(config, "seed")
    pre_train = data.subset(train_ds, classes=s["pretrain_classes"], seed=seed)
    pre_test = data.subset(test_ds, classes=s["pretrain_classes"], seed=seed)
    model = common.build_model(config, num_classes=len(s["pretrain_classes"]))
    k_init, k_train = jax.random.split(common.seed_key(config))
    variables = _init(model)(k_init, pre_train.x[:1])
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    steps = common.get(config, "train.steps")
    state = train.TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=common.build_optimizer(config, steps=steps),
        batch_stats=batch_stats,
    )
    state, _ = common.fit(
        config,
        state,
        train.make_train_step(),
        pre_train,
        workdir=workdir,
        phase="pretrain",
        steps=steps,
        key=k_train,
        progress=progress,
    )
    summary = {
        "classes": list(s["pretrain_classes"]),
        "train_examples": len(pre_train.label),
        "steps": steps,
        "test_accuracy": common.evaluate(config, state, pre_test)["test_accuracy"],
        "wall_s": timer(),
    }
    if workdir:  # adapt from what was saved, as a separate run would
        return finetune.restore_variables(os.path.join(workdir, "checkpoints", "pretrain")), summary
    return {"params": state.params, "batch_stats": state.batch_stats}, summary


class _Context(NamedTuple):
    """What every mode and seed shares: compiled once, used many times."""

    config: Any
    s: dict
    model: Any  # the target-classes model
    init: Any  # jitted model.init
    source: dict  # pretrained variables
    train_ds: data.Dataset
    test_ds: data.Dataset  # test examples of the target classes
    workdir: str | None
    progress: bool


def _init(model):
    return jax.jit(functools.partial(model.init, train=False))


_EVAL_STEP = train.make_eval_step()
_NO_TX = optax.identity()  # one object, so evaluation compiles once per model


def _evaluate(ctx: _Context, params, batch_stats) -> float:
    """Accuracy of plain params (LoRA exported) through one shared compiled eval step."""
    state = train.TrainState.create(
        apply_fn=ctx.model.apply, params=params, tx=_NO_TX, batch_stats=batch_stats
    )
    return common.evaluate(ctx.config, state, ctx.test_ds, eval_step=_EVAL_STEP)["test_accuracy"]


def _start(ctx: _Context, mode: str, seed: int):
    """Few-shot subset, keys and the initial (pretrained unless scratch) variables."""
    s = ctx.s
    shot = data.subset(
        ctx.train_ds, per_class=s["per_class"], classes=s["target_classes"], seed=seed
    )
    k_init, k_lora, k_train = jax.random.split(jax.random.PRNGKey(seed), 3)
    variables = dict(ctx.init(k_init, shot.x[:1]))
    variables.setdefault("batch_stats", {})
    if mode != "scratch":
        variables = finetune.load_pretrained(variables, ctx.source, dont_load=s["dont_load"])
    return shot, variables["params"], variables.get("batch_stats", {}), k_lora, k_train


def _logged_ms(workdir: str | None, phase: str, steps: int, summary: dict) -> float | None:
    """Milliseconds per step as logged at the last step (before the final checkpoint save)."""
    rate = summary.get("train_steps_per_s")
    if workdir and os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("phase") == phase and rec.get("step") == steps:
                    rate = rec.get("steps_per_s")
    return 1000.0 / rate if rate and np.isfinite(rate) else None


def _run_mode(ctx: _Context, mode: str) -> list[dict]:
    """Adapts with ``mode`` once per seed (the step compiles per fit call, nothing else)."""
    s = ctx.s
    if mode == "features":
        return _features(ctx)
    abstract = _abstract(ctx.config, len(s["target_classes"]), ctx.train_ds.x)["params"]
    params = _mode_params(s, mode, abstract, jax.random.PRNGKey(0))
    labels, tx = _labels_and_tx(s, mode, params, steps=s["steps"])
    apply_fn, export = ctx.model.apply, None
    if mode == "lora":
        apply_fn = lora.wrap_apply(ctx.model.apply, alpha=s["lora_alpha"])
        export = jax.jit(functools.partial(lora.export, alpha=s["lora_alpha"]))
    step_fn = finetune.make_train_step(labels)
    results = []
    for seed in s["seeds"]:
        shot, params, batch_stats, k_lora, k_train = _start(ctx, mode, seed)
        state = train.TrainState.create(
            apply_fn=apply_fn, params=_mode_params(s, mode, params, k_lora), tx=tx,
            batch_stats=batch_stats,
        )  # fmt: skip
        phase = f"{mode}_seed{seed}"
        state, summary = train.fit(
            state,
            step_fn,
            lambda start, shot=shot, seed=seed: data.train_batches(
                shot, batch_size=s["batch_size"], seed=seed, start_step=start
            ),
            steps=s["steps"],
            key=k_train,
            workdir=ctx.workdir,
            phase=phase,
            log_every=s["steps"],
            progress=ctx.progress,
            strategy=common.strategy(ctx.config),
        )
        trainable, frozen = finetune.count_trainable(state.params, labels)
        plain = export(state.params) if export else state.params
        results.append(
            {
                "test_accuracy": _evaluate(ctx, plain, state.batch_stats),
                "trainable_params": trainable,
                "frozen_params": frozen,
                "opt_state_bytes": tree_lib.tree_bytes(state.opt_state),
                "step_ms": _logged_ms(ctx.workdir, phase, s["steps"], summary),
            }
        )
    return results


def _features(ctx: _Context) -> list[dict]:
    """Frozen trunk once over each few-shot set, then the head on the cached features."""
    s = ctx.s
    num_classes, n_shot = len(s["target_classes"]), s["per_class"] * len(s["target_classes"])
    if s["features_solver"] == "ridge":
        solve = jax.jit(
            functools.partial(features_lib.ridge_head, num_classes=num_classes, l2=s["features_l2"])
        )
    else:
        tx = _group_tx(s, s["learning_rate"], steps=s["steps"])
        head_steps = features_lib.head_trainer(tx, steps=s["steps"], num_examples=n_shot)
    results = []
    for seed in s["seeds"]:
        shot, params, batch_stats, _, k_train = _start(ctx, "features", seed)
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        feats = features_lib.extract(ctx.model.apply, variables, shot.x)
        if s["features_solver"] == "ridge":
            call, steps = functools.partial(solve, feats, shot.label), 1
        else:
            head = dict(params["head"])
            args = (head, tx.init(head), feats, shot.label, k_train)
            call, steps = functools.partial(head_steps, *args), s["steps"]
        # All head steps are one compiled call; time a second call (the first compiles).
        out = jax.block_until_ready(call())
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        step_ms = 1000.0 * (time.perf_counter() - t0) / steps
        head, opt_state = (out, {}) if s["features_solver"] == "ridge" else out[:2]
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
    fig.tight_layout()
    report.savefig(fig, os.path.join(workdir, "transfer.png"), dpi=100)
    plt.close(fig)
    return "transfer.png"


def run(config, workdir: str, *, progress: bool = True) -> dict:
    s = _settings(config)
    train_ds = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    source, pre_summary = _pretrain(config, s, workdir, train_ds, test_ds, progress)
    model = common.build_model(config, num_classes=len(s["target_classes"]))
    target_test = data.subset(test_ds, classes=s["target_classes"], seed=0)
    ctx = _Context(config, s, model, _init(model), source, train_ds, target_test, workdir, progress)
    per_seed, rows = {}, []
    for mode in s["modes"]:
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
    out = {
        "experiment": "transfer",
        "dataset": common.get(config, "dataset.name"),
        "model": common.get(config, "model.name"),
        "rows": rows,
        "pretrain": pre_summary,
        "target_classes": list(s["target_classes"]),
        "per_class": s["per_class"],
        "test_examples": len(target_test.label),
        "seeds": list(s["seeds"]),
        "per_seed_accuracy": per_seed,
    }
    if workdir:
        out["plots"] = [_plot(workdir, rows)]
    return out
