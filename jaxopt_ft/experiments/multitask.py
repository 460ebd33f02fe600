"""Experiment ``multitask``: one shared trunk, several tasks, every weighting method side by side.

Rows (``multitask.rows``, in that order): ``single_task`` (one model per task, each task's
metric from its own model), then one multi-task model per method: ``equal``, ``static``,
``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad``, ``alternating`` and the gradient balancers
``mgda``, ``cagrad``, ``nash_mtl``, ``imtl``, ``gradvac``, ``graddrop``, ``rlw``,
``aligned_mtl``, ``db_mtl`` (``mgda_ub``: MGDA on the representation's gradients), and the
architecture ``mmoe`` (`jaxopt_ft.multitask.MMoE` experts from the configured model, equal
weights). Every row has the per-task test metrics (``<task>_accuracy`` /
``<task>_mse``), ``params`` (trunk + heads; all T models for ``single_task``), ``wall_s``,
``step_ms`` and, for methods with weights other than 1, the final ``weight_<task>``; with a
``single_task`` row, every other row has ``delta_m`` (`delta_m`, percent). The top level has
``tasks`` (their order) and ``task_similarity``: the mean cosine similarity of the per-task
trunk gradients over the training of ``similarity_from``, also drawn as
``task_similarity.png``. Each row is its own resumable phase.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxopt_ft import data, report
from jaxopt_ft import multitask as mt
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import MultitaskSettings as Settings

_VARYING_WEIGHTS = ("static", "uncertainty", "dwa", "gradnorm")
# Rows that change the trunk (trained with equal weights): row -> (trunk, tasks, s) -> trunk.
_ARCHITECTURES = {
    "mmoe": lambda trunk, tasks, s: mt.MMoE(trunk, tasks, s.multitask.num_experts),
}


def _tasks(s: Settings) -> tuple[mt.Task, ...]:
    return mt.make_tasks(s.multitask.tasks)


def _method(s: Settings, name: str, *, window: int) -> mt.Method:
    m = s.multitask
    return mt.Method(
        name=name,
        static_weights=dict(m.static_weights),
        temperature=m.dwa_temperature,
        window=window,
        alpha=m.gradnorm_alpha,
        weight_lr=m.gradnorm_lr,
        alternate=m.alternate,
        mgda_normalize=m.mgda_normalize,
        cagrad_alpha=m.cagrad_alpha,
        cagrad_rescale=m.cagrad_rescale,
        nash_max_norm=m.nash_max_norm,
        gradvac_beta=m.gradvac_beta,
        graddrop_leak=m.graddrop_leak,
        db_beta=m.db_beta,
        db_beta_sigma=m.db_beta_sigma,
    )


def _row_method(s: Settings, row: str, *, window: int) -> mt.Method:
    return _method(s, "equal" if row in _ARCHITECTURES else row, window=window)


def _dwa_window(s: Settings, n_train: int) -> int:
    return s.multitask.dwa_window or max(1, n_train // s.train.batch_size)


def _check_declared(tasks: tuple[mt.Task, ...], ds: data.Dataset) -> None:
    """Every declared task has targets on ``ds``, with the kind and classes they have there."""
    avail = data.available_targets(ds.name, num_classes=ds.num_classes)
    for task in tasks:
        if task.name not in avail:
            raise ValueError(
                f"Task {task.name!r} has no labels on dataset {ds.name!r}; tasks with labels "
                f"there: {', '.join(avail) or 'none'}. Declare only those tasks."
            )
        spec = avail[task.name]
        if (spec.kind, spec.num_classes) != (task.kind, task.num_classes):
            raise ValueError(
                f"Task {task.name!r} is declared as {task.kind} with num_classes="
                f"{task.num_classes}, but its targets on {ds.name!r} are {spec.kind} with "
                f"num_classes={spec.num_classes}; fix the declaration."
            )


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    tasks = _tasks(s)
    _check_declared(tasks, train_ds)
    if s.multitask.similarity_every > s.train.steps:
        raise ValueError(
            f"multitask.similarity_every={s.multitask.similarity_every} exceeds train.steps; "
            "no step would be measured."
        )
    names = [t.name for t in tasks]
    mt.static_weights(dict.fromkeys(names, 0.0), s.multitask.static_weights)
    window = _dwa_window(s, len(train_ds.label))
    for name in s.multitask.rows:  # method hyperparameters and static weights, per row
        if name in _ARCHITECTURES:
            _check_architecture(s, name, tasks, train_ds)
        elif name != "single_task":
            method = _method(s, name, window=window)
            if name != "gradnorm":  # its shared layer is resolved from the model at init
                mt.make_train_step(tasks, method)


def _check_architecture(s: Settings, name: str, tasks, train_ds: data.Dataset) -> None:
    """Builds the row's model on one example, so an incompatible trunk fails before training."""
    trunk = _ARCHITECTURES[name](common.build_model(s, num_classes=train_ds.num_classes), tasks, s)
    model = mt.MultiTaskModel(trunk, tasks)
    jax.eval_shape(model.init, jax.random.PRNGKey(0), train_ds.x[:1])


def _batches(ds: data.Dataset, targets: dict, *, batch_size: int, seed: int):
    # Shuffle row indices with the loader's resume-exact order, then gather every task's targets.
    index = data.Dataset(np.arange(len(ds.label)), ds.label, ds.num_classes, ds.name)

    def make(start: int):
        for b in data.train_batches(index, batch_size=batch_size, seed=seed, start_step=start):
            rows = b["x"]
            yield {"x": ds.x[rows], "targets": {k: v[rows] for k, v in targets.items()}}

    return make


def _train_row(s: Settings, workdir, *, tasks, method, phase, train_ds, targets, keys, progress):
    steps = s.train.steps
    trunk = common.build_model(s, num_classes=train_ds.num_classes)
    if phase in _ARCHITECTURES:
        trunk = _ARCHITECTURES[phase](trunk, tasks, s)
    model = mt.MultiTaskModel(trunk, tasks)
    state, method = mt.init_state(
        model,
        method,
        key=keys[0],
        sample_x=train_ds.x[:1],
        tx=common.build_optimizer(s, steps=steps),
        head_tx=common.build_optimizer(s, steps=math.ceil(steps / len(tasks))),
    )
    every = s.multitask.similarity_every if phase == s.multitask.similarity_from else 0
    step_fn = mt.make_train_step(
        tasks, method, similarity_every=every, axis_name=common.strategy(s).axis_name
    )
    batches = _batches(train_ds, targets, batch_size=s.train.batch_size, seed=s.seed)
    state, summary = common.fit_phase(
        s, state, step_fn, batches, workdir=workdir, phase=phase, steps=steps, key=keys[1],
        progress=progress,
    )  # fmt: skip
    return state, method, summary


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
    return report.save_plot(fig, workdir, "task_similarity.png", legend=False, dpi=120)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    tasks = _tasks(s)
    names = [t.name for t in tasks]
    train_ds = common.load_split(s, "train")
    test_ds = common.load_split(s, "test")
    train_y = data.derive_targets(train_ds, names)
    test_y = data.derive_targets(test_ds, names, reference=train_ds)
    keys = jax.random.split(common.seed_key(s))
    window = _dwa_window(s, len(train_ds.label))
    kw = dict(train_ds=train_ds, keys=keys, progress=progress)
    rows, similarity = [], None
    for row_name in s.multitask.rows:
        timer = common.Timer()
        if row_name == "single_task":
            row, params = {"name": row_name}, 0
            for task in tasks:
                state, _, _ = _train_row(
                    s, workdir, tasks=(task,), method=mt.Method(name="equal"),
                    phase=f"single_task_{task.name}",
                    targets={task.name: train_y[task.name]}, **kw,
                )  # fmt: skip
                row.update(_evaluate(s, state, (task,), test_ds, test_y))
                params += tree_lib.count_params(mt.model_params(state.params))
            row.update(params=params, wall_s=timer())
            rows.append(row)
            continue
        state, method, summary = _train_row(
            s, workdir, tasks=tasks, method=_row_method(s, row_name, window=window), phase=row_name,
            targets=train_y, **kw,
        )  # fmt: skip
        row = {"name": row_name, **_evaluate(s, state, tasks, test_ds, test_y)}
        row["params"] = tree_lib.count_params(mt.model_params(state.params))
        if row_name in _VARYING_WEIGHTS:
            row.update(_final_weights(state, tasks, method))
        row["train_steps_per_s"] = summary.get("train_steps_per_s")
        if row["train_steps_per_s"]:
            row["step_ms"] = 1000.0 / row["train_steps_per_s"]
        row["wall_s"] = timer()
        rows.append(row)
        if row_name == s.multitask.similarity_from:
            sim = state.aux["similarity"]
            similarity = (np.asarray(sim.mean()), int(sim.count))
    _add_delta_m(rows, tasks)
    matrix, count = similarity
    source = s.multitask.similarity_from
    plot = _plot(
        workdir,
        matrix,
        names,
        f"Cosine similarity of per-task trunk gradients\n({source} run, mean of {count} steps)",
    )
    return common.report(
        s,
        rows,
        tasks=names,
        task_similarity=[[round(float(v), 4) for v in r] for r in matrix],
        similarity_from=source,
        similarity_steps=count,
        plots=[plot],
    )


def delta_m(row: dict, single: dict, tasks) -> float:
    """LibMTL's average relative improvement over single-task learning, in percent.

    ``100 / T * sum_t s_t (M_t - M_t^single) / M_t^single`` with ``s_t = +1`` where higher is
    better (accuracy) and ``-1`` where lower is (MSE) (Maninis et al. 2019; Vandenhende et
    al. 2021).
    """
    total = 0.0
    for t in tasks:
        higher_better = t.kind == "classification"
        key = f"{t.name}_accuracy" if higher_better else f"{t.name}_mse"
        sign = 1.0 if higher_better else -1.0
        total += sign * (row[key] - single[key]) / single[key]
    return 100.0 * total / len(tasks)


def _add_delta_m(rows: list[dict], tasks) -> None:
    """Sets ``delta_m`` on every multi-task row when the ``single_task`` row exists."""
    single = next((r for r in rows if r["name"] == "single_task"), None)
    if single is None:
        return
    for r in rows:
        if r is not single:
            r["delta_m"] = round(delta_m(r, single, tasks), 3)


def _evaluate(s: Settings, state, tasks, test_ds: data.Dataset, test_y) -> dict[str, float]:
    return mt.evaluate(state, tasks, test_ds.x, test_y, batch_size=s.eval.batch_size)


def _final_weights(state, tasks, method: mt.Method) -> dict[str, float]:
    """The weights each task's loss had at the end of training."""
    names = [t.name for t in tasks]
    weighting = state.aux["weighting"]
    if method.name == "static":
        w = dict(method.static_weights)
    elif method.name == "uncertainty":
        w = {
            t.name: mt.UNCERTAINTY_FACTOR[t.kind]
            * math.exp(-float(state.params["log_vars"][t.name]))
            for t in tasks
        }
    elif method.name == "dwa":
        current = mt.dwa_current(weighting, temperature=method.temperature)
        w = dict(zip(names, np.asarray(current), strict=True))
    else:
        w = dict(zip(names, np.asarray(weighting.weights), strict=True))
    return {f"weight_{n}": float(w[n]) for n in names}
