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
its own resumable phase of `train.fit`.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import loop, optim, report, train
from jaxopt_ft.experiments import common


def _names(config, key: str, accepted) -> tuple[str, ...]:
    values = tuple(common.get(config, key))
    bad = [v for v in values if v not in accepted]
    if not values or bad or len(set(values)) != len(values):
        raise ValueError(
            f"{key}={list(values)!r} must be distinct names from: {', '.join(accepted)}"
            f"{f' (unknown: {bad})' if bad else ''}."
        )
    return values


def _runs(config) -> list[dict]:
    """The sweep's runs as plain dicts, in report order."""
    steps = common.get(config, "train.steps")
    base_bs = common.get(config, "train.batch_size")
    lrs = common.get(config, "sweep.learning_rates")
    runs = []
    for opt in _names(config, "sweep.optimizers", optim.OPTIMIZERS):
        for sched in _names(config, "sweep.schedules", optim.SCHEDULES):
            runs.append(
                {
                    "name": f"{opt}/{sched}",
                    "optimizer": opt,
                    "schedule": sched,
                    "batch_size": base_bs,
                    "learning_rate": float(lrs[opt]),
                    "steps": steps,
                }
            )
    opt = common.get(config, "sweep.batch_optimizer")
    sched = common.get(config, "sweep.batch_schedule")
    for bs in common.get(config, "sweep.batch_sizes"):
        runs.append(
            {
                "name": f"batch_{bs}",
                "optimizer": opt,
                "schedule": sched,
                "batch_size": bs,
                "learning_rate": float(lrs[opt]) * bs / base_bs,
                "steps": max(1, round(steps * base_bs / bs)),
            }
        )
    return runs


def _run_config(config, run: dict):
    cfg = copy.deepcopy(config)
    cfg.optimizer.name = run["optimizer"]
    cfg.optimizer.learning_rate = run["learning_rate"]
    cfg.schedule.name = run["schedule"]
    cfg.schedule.warmup_steps = int(common.get(config, "sweep.warmup_fraction") * run["steps"])
    cfg.train.batch_size = run["batch_size"]
    cfg.train.steps = run["steps"]
    return cfg


def validate(config) -> None:
    common.validate_common(config)
    lrs = common.get(config, "sweep.learning_rates")
    _names(config, "sweep.optimizers", optim.OPTIMIZERS)
    _names(config, "sweep.schedules", optim.SCHEDULES)
    common.check_choice(config, "sweep.batch_optimizer", optim.OPTIMIZERS)
    common.check_choice(config, "sweep.batch_schedule", optim.SCHEDULES)
    common.check_float(config, "sweep.warmup_fraction", low=0.0, high=0.5, closed_low=True)
    needed = set(common.get(config, "sweep.optimizers")) | {
        common.get(config, "sweep.batch_optimizer")
    }
    missing = sorted(n for n in needed if n not in lrs)
    if missing:
        raise ValueError(
            f"sweep.learning_rates has no rate for {missing}; add e.g. "
            f"--config.sweep.learning_rates.{missing[0]}=0.01 to the config."
        )
    sizes = common.get(config, "sweep.batch_sizes")
    n_train = len(common.load_split(config, "train").label)
    bad = [b for b in sizes if isinstance(b, bool) or not isinstance(b, int) or not 0 < b]
    if bad or any(b > n_train for b in sizes):
        raise ValueError(
            f"sweep.batch_sizes={list(sizes)!r} must be integers in [1, {n_train}] (the size of "
            "the training split)."
        )
    for b in sizes:
        common.check_batch(config, b, "sweep.batch_sizes entry")
    for run in _runs(config):
        cfg = _run_config(config, run)
        common.check_float(cfg, "optimizer.learning_rate", low=0.0, high=100.0)
        common.build_optimizer(cfg, steps=run["steps"])  # rates, schedules, warm-up


def _curve(workdir: str, phase: str) -> tuple[list[int], list[float]]:
    # Only the main process logs metrics (and plots); elsewhere the curve is empty.
    records = loop.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    mine = [r for r in records if r.get("phase") == phase]
    return [r["step"] for r in mine], [r["loss"] for r in mine]


def run(config, workdir: str, *, progress: bool = True) -> dict:
    train_ds = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    model = common.build_model(config, num_classes=train_ds.num_classes)
    k_init, k_train = jax.random.split(common.seed_key(config))
    params, batch_stats = train.init_model(model, k_init, train_ds.x[:1])
    augment = common.build_augment(config, train_ds.name, num_classes=train_ds.num_classes)
    step_fn = train.make_train_step(
        augment=augment, label_smoothing=common.get(config, "train.label_smoothing", 0.0)
    )
    rows, curves = [], {}
    for r in _runs(config):
        timer = common.Timer()
        cfg = _run_config(config, r)
        phase = r["name"].replace("/", "_")
        state = train.TrainState.create(
            apply_fn=model.apply,
            params=jax.tree.map(jnp.array, params),  # fit donates the state; keep ours
            tx=common.build_optimizer(cfg, steps=r["steps"]),
            batch_stats=jax.tree.map(jnp.array, batch_stats),
        )
        state, summary = common.fit(
            cfg,
            state,
            step_fn,
            train_ds,
            workdir=workdir,
            phase=phase,
            steps=r["steps"],
            key=k_train,
            progress=progress,
        )
        if common.get(config, "train.ema_decay", 0.0):
            state = state.replace(params=optim.ema_params(state.opt_state))
        metrics = common.evaluate(config, state, test_ds)
        train_loss = common.evaluate(config, state, train_ds)["test_loss"]
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
    plots = [_plot_losses(workdir, curves, config), _plot_accuracy(workdir, rows, config)]
    return {
        "experiment": "sweep",
        "dataset": train_ds.name,
        "model": common.get(config, "model.name"),
        "rows": rows,
        "plots": plots,
    }


def _plot_losses(workdir: str, curves: dict, config) -> str:
    plt = report.pyplot()
    opts = list(common.get(config, "sweep.optimizers"))
    panels = opts + ["batch size"]
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
    n_train = None
    for ax, panel in zip(axes.flat, panels, strict=False):
        for name, (r, steps, losses) in curves.items():
            if not steps:
                continue
            if panel == "batch size" and name.startswith("batch_"):
                n_train = n_train or len(common.load_split(config, "train").label)
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
    smoothing = common.get(config, "train.label_smoothing", 0.0)
    what = f"label smoothing {smoothing}, " if smoothing else ""
    every = common.get(config, "train.log_every")
    fig.suptitle(f"training loss ({what}one logged batch every {every} steps)", fontsize=10)
    fig.tight_layout()
    report.savefig(fig, os.path.join(workdir, "loss_curves.png"), dpi=110)
    plt.close(fig)
    return "loss_curves.png"


def _plot_accuracy(workdir: str, rows: list[dict], config) -> str:
    plt = report.pyplot()
    opts = list(common.get(config, "sweep.optimizers"))
    scheds = list(common.get(config, "sweep.schedules"))
    grid = {(r["optimizer"], r["schedule"]): r["test_accuracy"] for r in rows if "/" in r["name"]}
    batch = [r for r in rows if r["name"].startswith("batch_")]
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 1]}, squeeze=True
    )
    width = 0.8 / len(scheds)
    for i, s in enumerate(scheds):
        xs = np.arange(len(opts)) + (i - (len(scheds) - 1) / 2) * width
        ax.bar(xs, [grid[(o, s)] for o in opts], width, label=s)
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
    bx.set_title(f"{common.get(config, 'sweep.batch_optimizer')}", fontsize=10)
    fig.tight_layout()
    report.savefig(fig, os.path.join(workdir, "accuracy_bars.png"), dpi=110)
    plt.close(fig)
    return "accuracy_bars.png"
