"""Experiment ``multitask``: one shared trunk, several tasks, every weighting method side by side.

Rows (``multitask.rows``, in that order): ``single_task`` (one model per task, each task's
metric from its own model), then one multi-task model per method: ``equal``, ``static``,
``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad``, ``alternating``. Every row has the per-task
test metrics (``<task>_accuracy`` / ``<task>_mse``), ``params`` (trunk + heads; all T models
for ``single_task``), ``wall_s`` and, for methods with weights other than 1, the final
``weight_<task>``. The top level has ``tasks`` (their order) and ``task_similarity``: the mean
cosine similarity of the per-task trunk gradients over the training of ``similarity_from``,
also drawn as ``task_similarity.png``. Each row is its own resumable `train.fit` phase.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import ml_collections
import numpy as np

from jaxopt_ft import data, report, train
from jaxopt_ft import multitask as mt
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common

ROWS = ("single_task", *mt.METHODS)
DEFAULT_ROWS = ("single_task", "equal", "uncertainty", "dwa", "gradnorm", "pcgrad", "alternating")
_VARYING_WEIGHTS = ("static", "uncertainty", "dwa", "gradnorm")


def config_section(tasks: dict, arg: str | None = None) -> ml_collections.ConfigDict:
    """The ``multitask`` config section with defaults, for config files.

    Args:
        tasks: ``{name: {"kind", "num_classes", "loss"}}``: the tasks the config offers.
        arg: the config file's ``:arg``, a comma-separated subset of ``tasks`` (None: all).

    Raises:
        ValueError: for a task name in ``arg`` that ``tasks`` does not offer.
    """
    names = [n.strip() for n in arg.split(",") if n.strip()] if arg else list(tasks)
    unknown = [n for n in names if n not in tasks]
    if unknown or not names:
        raise ValueError(
            f"The config argument {arg!r} names unknown task(s) {unknown}; pick a "
            f"comma-separated subset of {', '.join(tasks)}."
        )
    return ml_collections.ConfigDict(
        {
            # Unsorted, so that tasks keep the order they are declared in.
            "tasks": ml_collections.ConfigDict({n: dict(tasks[n]) for n in names}, sort_keys=False),
            "rows": DEFAULT_ROWS,
            "static_weights": ml_collections.ConfigDict(dict.fromkeys(names, 1.0), sort_keys=False),
            "dwa_temperature": 2.0,
            "dwa_window": 0,  # steps per DWA window; 0 = one epoch
            "gradnorm_alpha": 1.5,
            "gradnorm_lr": 0.025,
            "alternate": "round_robin",
            "similarity_from": "equal",
            "similarity_every": 10,
        }
    )


def _plain(value):
    return value.to_dict() if hasattr(value, "to_dict") else value


def _tasks(config) -> tuple[mt.Task, ...]:
    return mt.make_tasks(_plain(common.get(config, "multitask.tasks")))


def _method(config, name: str, *, window: int) -> mt.Method:
    return mt.Method(
        name=name,
        static_weights=dict(_plain(common.get(config, "multitask.static_weights"))),
        temperature=float(common.get(config, "multitask.dwa_temperature")),
        window=window,
        alpha=float(common.get(config, "multitask.gradnorm_alpha")),
        weight_lr=float(common.get(config, "multitask.gradnorm_lr")),
        alternate=common.get(config, "multitask.alternate"),
    )


def _dwa_window(config, n_train: int) -> int:
    window = common.get(config, "multitask.dwa_window")
    return window or max(1, n_train // common.get(config, "train.batch_size"))


def validate(config) -> None:
    common.validate_common(config)
    tasks = _tasks(config)
    names = [t.name for t in tasks]
    train_ds = common.load_split(config, "train")
    mt.derive_targets(train_ds, tasks)  # a declared task without labels fails here
    rows = tuple(common.get(config, "multitask.rows"))
    bad = [r for r in rows if r not in ROWS]
    if not rows or bad or len(set(rows)) != len(rows):
        raise ValueError(f"multitask.rows={rows!r} must be distinct names from: {', '.join(ROWS)}.")
    source = common.get(config, "multitask.similarity_from")
    if source not in rows or source == "single_task":
        raise ValueError(
            f"multitask.similarity_from={source!r} must be one of the multi-task rows "
            f"{[r for r in rows if r != 'single_task']}."
        )
    every = common.check_int(config, "multitask.similarity_every", minimum=1)
    if every > common.get(config, "train.steps"):
        raise ValueError(
            f"multitask.similarity_every={every} exceeds train.steps; no step would be measured."
        )
    common.check_int(config, "multitask.dwa_window", minimum=0)
    weights = _plain(common.get(config, "multitask.static_weights"))
    if not isinstance(weights, dict):
        raise ValueError(f"multitask.static_weights must map task -> weight, got {weights!r}.")
    mt.static_weights(dict.fromkeys(names, 0.0), weights)  # unknown or missing tasks
    method = _method(config, "equal", window=_dwa_window(config, len(train_ds.label)))
    for name in rows:  # method hyperparameters and static weights, per row
        if name != "single_task":
            mt.make_train_step(tasks, dataclasses.replace(method, name=name))


def _batches(ds: data.Dataset, targets: dict, *, batch_size: int, seed: int):
    # Shuffle row indices with the loader's resume-exact order, then gather every task's targets.
    index = data.Dataset(np.arange(len(ds.label)), ds.label, ds.num_classes, ds.name)

    def make(start: int):
        for b in data.train_batches(index, batch_size=batch_size, seed=seed, start_step=start):
            rows = b["x"]
            yield {"x": ds.x[rows], "targets": {k: v[rows] for k, v in targets.items()}}

    return make


def _train_row(config, workdir, *, tasks, method, phase, train_ds, targets, keys, progress):
    steps = common.get(config, "train.steps")
    trunk = common.build_model(config, num_classes=train_ds.num_classes)
    model = mt.MultiTaskModel(trunk, tasks)
    head_tx = common.build_optimizer(config, steps=math.ceil(steps / len(tasks)))
    state = mt.init_state(
        model,
        method,
        key=keys[0],
        sample_x=train_ds.x[:1],
        tx=common.build_optimizer(config, steps=steps),
        head_tx=head_tx,
    )
    every = common.get(config, "multitask.similarity_every")
    is_source = phase == common.get(config, "multitask.similarity_from")
    strategy = common.strategy(config)
    step_fn = mt.make_train_step(
        tasks, method, similarity_every=every if is_source else 0, axis_name=strategy.axis_name
    )
    batches = _batches(
        train_ds,
        targets,
        batch_size=common.get(config, "train.batch_size"),
        seed=common.get(config, "seed"),
    )
    return train.fit(
        state,
        step_fn,
        batches,
        steps=steps,
        key=keys[1],
        workdir=workdir,
        phase=phase,
        checkpoint_every=common.get(config, "checkpoint.every_steps"),
        max_to_keep=common.get(config, "checkpoint.max_to_keep", 3),
        log_every=common.get(config, "train.log_every", 100),
        progress=progress,
        strategy=strategy,
    )


def _plot(workdir: str, matrix: np.ndarray, names, title: str) -> str:
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.1 * len(names) + 1.5))
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if abs(matrix[i, j]) > 0.6 else "black"
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=color, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    name = "task_similarity.png"
    report.savefig(fig, os.path.join(workdir, name), dpi=120)
    plt.close(fig)
    return name


def run(config, workdir: str, *, progress: bool = True) -> dict:
    tasks = _tasks(config)
    names = [t.name for t in tasks]
    train_ds = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    train_y = mt.derive_targets(train_ds, tasks)
    test_y = mt.derive_targets(test_ds, tasks, reference=train_ds)
    keys = jax.random.split(common.seed_key(config))
    window = _dwa_window(config, len(train_ds.label))
    eval_bs = common.get(config, "eval.batch_size", 1000)
    common_kw = dict(train_ds=train_ds, keys=keys, progress=progress)
    rows, similarity = [], None
    for row_name in common.get(config, "multitask.rows"):
        timer = common.Timer()
        if row_name == "single_task":
            row, params = {"name": row_name}, 0
            for task in tasks:
                state, _ = _train_row(
                    config,
                    workdir,
                    tasks=(task,),
                    method=mt.Method(name="equal"),
                    phase=f"single_task_{task.name}",
                    targets={task.name: train_y[task.name]},
                    **common_kw,
                )
                row.update(mt.evaluate(state, (task,), test_ds.x, test_y, batch_size=eval_bs))
                params += tree_lib.count_params(state.model_params())
            row.update(params=params, wall_s=timer())
            rows.append(row)
            continue
        method = _method(config, row_name, window=window)
        state, summary = _train_row(
            config,
            workdir,
            tasks=tasks,
            method=method,
            phase=row_name,
            targets=train_y,
            **common_kw,
        )
        row = {"name": row_name, **mt.evaluate(state, tasks, test_ds.x, test_y, batch_size=eval_bs)}
        row["params"] = tree_lib.count_params(state.model_params())
        if row_name in _VARYING_WEIGHTS:
            row.update(_final_weights(state, tasks, method))
        row["train_steps_per_s"] = summary.get("train_steps_per_s")
        row["wall_s"] = timer()
        rows.append(row)
        if row_name == common.get(config, "multitask.similarity_from"):
            similarity = (np.asarray(state.similarity.mean()), int(state.similarity.count))
    matrix, count = similarity
    source = common.get(config, "multitask.similarity_from")
    plot = _plot(
        workdir,
        matrix,
        names,
        f"Cosine similarity of per-task trunk gradients\n({source} run, mean of {count} steps)",
    )
    return {
        "experiment": "multitask",
        "dataset": common.get(config, "dataset.name"),
        "model": common.get(config, "model.name"),
        "rows": rows,
        "tasks": names,
        "task_similarity": [[round(float(v), 4) for v in r] for r in matrix],
        "similarity_from": source,
        "similarity_steps": count,
        "plots": [plot],
    }


def _final_weights(state: mt.MultiTaskState, tasks, method: mt.Method) -> dict[str, float]:
    """The weights each task's loss had at the end of training."""
    names = [t.name for t in tasks]
    if method.name == "static":
        w = dict(method.static_weights)
    elif method.name == "uncertainty":
        w = {
            t.name: mt.weighting.UNCERTAINTY_FACTOR[t.kind]
            * math.exp(-float(state.params["log_vars"][t.name]))
            for t in tasks
        }
    elif method.name == "dwa":
        current = mt.weighting.dwa_current(state.weighting, temperature=method.temperature)
        w = dict(zip(names, np.asarray(current), strict=True))
    else:
        w = dict(zip(names, np.asarray(state.weighting.weights), strict=True))
    return {f"weight_{n}": float(w[n]) for n in names}
