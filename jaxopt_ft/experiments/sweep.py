"""Experiment ``sweep``: one model under every optimizer x schedule, plus a batch-size sweep.

Each optimizer in ``sweep.optimizers`` trains with its own learning rate from
``sweep.learning_rates`` (SGD needs a far larger rate than Adam) under each schedule in
``sweep.schedules``, from the same initial parameters and the same batches. The batch-size
sweep trains ``sweep.batch_optimizer`` with ``sweep.batch_schedule`` at each size in
``sweep.batch_sizes`` for the same number of epochs as the base run (``train.steps`` at
``train.batch_size``), scaling the learning rate linearly with the batch size (Goyal et al.,
2017). ``warmup_cosine`` warms up over ``sweep.warmup_fraction`` of each run's steps.

One row per run (``name``, ``optimizer``, ``schedule``, ``batch_size``, ``learning_rate``,
``steps``, ``test_accuracy``, ``test_loss``, ``final_train_loss`` (over the whole training
split at the end), ``nonfinite_updates``, ``wall_s``), and two plots in the workdir:
``loss_curves.png`` (logged training loss per run) and ``accuracy_bars.png``. Every run is
its own resumable phase.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import loop, optim, report, train
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import SweepSettings as Settings


def _runs(s: Settings) -> list[dict]:
    """The sweep's runs as plain dicts, in report order."""
    steps, base_bs, sw = s.train.steps, s.train.batch_size, s.sweep
    runs = []
    for opt in sw.optimizers:
        for sched in sw.schedules:
            runs.append(
                {
                    "name": f"{opt}/{sched}",
                    "optimizer": opt,
                    "schedule": sched,
                    "batch_size": base_bs,
                    "learning_rate": float(sw.learning_rates[opt]),
                    "steps": steps,
                }
            )
    opt = sw.batch_optimizer
    for bs in sw.batch_sizes:
        runs.append(
            {
                "name": f"batch_{bs}",
                "optimizer": opt,
                "schedule": sw.batch_schedule,
                "batch_size": bs,
                "learning_rate": float(sw.learning_rates[opt]) * bs / base_bs,
                "steps": max(1, round(steps * base_bs / bs)),
            }
        )
    return runs


def _run_settings(s: Settings, run: dict) -> Settings:
    """``s`` with one run's optimizer, schedule, batch size and length."""
    return dataclasses.replace(
        s,
        optimizer=dataclasses.replace(
            s.optimizer, name=run["optimizer"], learning_rate=run["learning_rate"]
        ),
        schedule=dataclasses.replace(
            s.schedule,
            name=run["schedule"],
            warmup_steps=int(s.sweep.warmup_fraction * run["steps"]),
        ),
        train=dataclasses.replace(s.train, batch_size=run["batch_size"], steps=run["steps"]),
    )


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    n_train = len(train_ds.label)
    sizes = s.sweep.batch_sizes
    if any(b > n_train for b in sizes):
        raise ValueError(
            f"sweep.batch_sizes={list(sizes)!r} must be integers in [1, {n_train}] (the size of "
            "the training split)."
        )
    for b in sizes:
        common.check_batch(s, b, "sweep.batch_sizes entry")
    for run in _runs(s):
        if not 0 < run["learning_rate"] <= 100:
            raise ValueError(
                f"Run {run['name']!r} scales the learning rate to {run['learning_rate']!r}, "
                "outside (0, 100]; lower sweep.learning_rates or the largest batch size."
            )
        common.build_optimizer(_run_settings(s, run), steps=run["steps"])  # schedules, warm-up


def _curve(workdir: str, phase: str) -> tuple[list[int], list[float]]:
    # Only the main process logs metrics (and plots); elsewhere the curve is empty.
    records = loop.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    mine = [r for r in records if r.get("phase") == phase]
    return [r["step"] for r in mine], [r["loss"] for r in mine]


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    train_ds = common.load_split(s, "train")
    test_ds = common.load_split(s, "test")
    model = common.build_model(s, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(s))
    params, batch_stats = train.init_model(model, k_init, train_ds.x[:1])
    augment = common.build_augment(s, train_ds.name, num_classes=train_ds.num_classes)
    step_fn = common.classification_step(s, augment=augment)
    rows, curves = [], {}
    for r in _runs(s):
        timer = common.Timer()
        rs = _run_settings(s, r)
        phase = r["name"].replace("/", "_")
        state = train.TrainState.create(
            apply_fn=model.apply,
            params=jax.tree.map(jnp.array, params),  # fit donates the state; keep ours
            tx=common.build_optimizer(rs, steps=r["steps"]),
            batch_stats=jax.tree.map(jnp.array, batch_stats),
        )
        batches = common.train_batches(s, train_ds, batch_size=r["batch_size"], seed=s.seed)
        state, summary = common.fit_phase(
            rs, state, step_fn, batches, workdir=workdir, phase=phase, steps=r["steps"],
            key=k_train, progress=progress,
        )  # fmt: skip
        final = optim.ema_params(state.opt_state) if s.train.ema_decay else state.params
        variables = state.variables(final)
        metrics = common.evaluate(s, state.apply_fn, variables, test_ds)
        train_loss = common.evaluate(s, state.apply_fn, variables, train_ds)["test_loss"]
        rows.append(
            {
                **r,
                **metrics,
                "final_train_loss": train_loss,
                "nonfinite_updates": summary.get("nonfinite_updates", 0),
                "wall_s": timer(),
            }
        )
        curves[r["name"]] = (r, *_curve(workdir, phase))
    plots = [
        _plot_losses(workdir, curves, s, len(train_ds.label)),
        _plot_accuracy(workdir, rows, s),
    ]
    return common.report(s, rows, plots=plots)


def _plot_losses(workdir: str, curves: dict, s: Settings, n_train: int) -> str:
    plt = report.pyplot()
    opts = list(s.sweep.optimizers)
    panels = opts + ["batch size"]
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for name, (r, steps, losses) in curves.items():
            if not steps:
                continue
            if panel == "batch size" and name.startswith("batch_"):
                epochs = np.asarray(steps) * r["batch_size"] / n_train
                ax.plot(epochs, losses, label=f"b={r['batch_size']}", lw=1)
            elif panel == r["optimizer"] and not name.startswith("batch_"):
                ax.plot(steps, losses, label=r["schedule"], lw=1)
        ax.set_title(panel if panel == "batch size" else f"{panel}", fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("epoch" if panel == "batch size" else "step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    smoothing = s.train.label_smoothing
    what = f"label smoothing {smoothing}, " if smoothing else ""
    every = s.train.log_every
    fig.suptitle(f"training loss ({what}one logged batch every {every} steps)", fontsize=10)
    return report.save_plot(fig, workdir, "loss_curves.png", legend=False, dpi=110)


def _plot_accuracy(workdir: str, rows: list[dict], s: Settings) -> str:
    plt = report.pyplot()
    opts = list(s.sweep.optimizers)
    scheds = list(s.sweep.schedules)
    grid = {(r["optimizer"], r["schedule"]): r["test_accuracy"] for r in rows if "/" in r["name"]}
    batch = [r for r in rows if r["name"].startswith("batch_")]
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 1]}, squeeze=True
    )
    width = 0.8 / len(scheds)
    for i, sched in enumerate(scheds):
        xs = np.arange(len(opts)) + (i - (len(scheds) - 1) / 2) * width
        ax.bar(xs, [grid[(o, sched)] for o in opts], width, label=sched)
    ax.set_xticks(np.arange(len(opts)), opts)
    ax.set_ylim(max(0.0, min(grid.values()) - 0.03), min(1.0, max(grid.values()) + 0.02))
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, ncols=len(scheds), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.set_title("optimizer x schedule", fontsize=10)
    accs = [r["test_accuracy"] for r in batch]
    bx.bar([str(r["batch_size"]) for r in batch], accs)
    for i, a in enumerate(accs):
        bx.text(i, a, f"{a:.3f}", ha="center", va="bottom", fontsize=6)
    bx.set_ylim(0.0, 1.0)
    bx.set_xlabel("batch size (lr scaled linearly)")
    bx.set_title(s.sweep.batch_optimizer, fontsize=10)
    return report.save_plot(fig, workdir, "accuracy_bars.png", legend=False, dpi=110)
