"""Experiment ``population``: K configurations of one optimizer family trained in one program.

``population.space`` spans the continuous hyperparameters (`jaxopt_ft.population`:
learning rate, momentum, weight decay, label smoothing); ``population.draw='grid'`` takes
``round(size ** (1 / axes))`` points per axis (log-spaced on ``log`` axes; ``size`` must be
that number to the power of the axes), ``'random'`` draws ``size`` points with ``seed``. Each
configuration is trained once per seed in ``population.seeds``. Every member trains for
``train.steps`` on the same batches with ``optimizer.name`` and the shape of ``schedule.name``
scaled by its own learning rate, in one vmapped, jitted step; with ``parallel.mode='sharding'``
the members are split over the devices (K must divide by the device count).

One row per member (its hyperparameters, ``seed``, ``test_accuracy``, ``test_loss``), the
population's ``wall_s``, and accuracy_vs_lr.png.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxopt_ft import data, optim, population, report
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import PopulationSettings as Settings


def _axis(spec: tuple, n: int) -> list:
    kind = spec[0]
    if kind == "choice":
        return list(spec[1])
    if kind == "log":
        return list(np.geomspace(spec[1], spec[2], n))
    if kind == "int":
        return sorted({int(round(v)) for v in np.linspace(spec[1], spec[2], n)})
    return list(np.linspace(spec[1], spec[2], n))


def _random(spec: tuple, rng: np.random.Generator) -> float:
    kind, low, high = spec[0], spec[1], spec[2] if len(spec) > 2 else None
    if kind == "choice":
        return low[rng.integers(len(low))]
    if kind == "log":
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return float(rng.integers(low, high + 1) if kind == "int" else rng.uniform(low, high))


def configurations(s: Settings) -> list[dict]:
    """The ``population.size`` configurations of ``population.space`` (no seeds yet)."""
    p = s.population
    names = list(p.space)
    if p.draw == "random":
        rng = np.random.default_rng([s.seed, 11])
        return [{k: _random(p.space[k], rng) for k in names} for _ in range(p.size)]
    n = max(1, round(p.size ** (1 / len(names))))
    axes = [_axis(p.space[k], n) for k in names]
    points = [dict(zip(names, map(float, v), strict=True)) for v in itertools.product(*axes)]
    if len(points) != p.size:
        raise ValueError(
            f"population.size={p.size} is not a grid over {len(names)} axes {names} "
            f"({n} points each give {len(points)}); set population.size={len(points)} or "
            "population.draw='random'."
        )
    return points


def members(s: Settings) -> list[dict]:
    return [{**c, "seed": seed} for seed in s.population.seeds for c in configurations(s)]


def check_parallel(s, k: int) -> None:
    """Raises ValueError unless ``k`` members split evenly over the parallel mode's devices."""
    mode = s.parallel.mode
    if mode == "none":
        return
    if mode != "sharding":
        raise ValueError(
            f"parallel.mode={mode!r} cannot split a population; use parallel.mode='sharding' "
            "(members over devices) or 'none'."
        )
    n = len(common.strategy(s).devices)
    if k % n:
        raise ValueError(
            f"A population of {k} members does not divide over {n} devices "
            f"(parallel.mode='sharding'); use a multiple of {n} members or parallel.devices "
            "that divides it."
        )


def validate(s: Settings) -> None:
    common.validate_common(s)
    ms = members(s)
    population.check_members(s.optimizer.name, ms)
    check_parallel(s, len(ms))


def _place(s, tree):
    if s.parallel.mode == "none":
        return tree
    mesh = Mesh(np.asarray(common.strategy(s).devices), ("members",))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("members")))


def train_members(
    s,
    ms: Sequence[dict],
    parts: tuple[data.Dataset, data.Dataset],
    *,
    report: Callable[[int, np.ndarray], bool] | None = None,
    every: int | None = None,
) -> np.ndarray:
    """Trains ``ms`` vmapped on ``parts[0]``; returns each member's accuracy on ``parts[1]``.

    ``report(step, accuracies)`` (every ``every`` steps, default ``s.hpo.eval_every``) returns
    True to stop early.
    """
    train_ds, eval_ds = parts
    o, steps = s.optimizer, s.train.steps
    model = common.build_model(s, num_classes=train_ds.num_classes)
    shape = optim.schedule(
        s.schedule.name, learning_rate=1.0, steps=steps, warmup_steps=s.schedule.warmup_steps,
        decay_rate=s.schedule.decay_rate, boundaries=s.schedule.boundaries,
        scale=s.schedule.scale, end_value=s.schedule.end_value,
    )  # fmt: skip
    mask = optim.decay_rules_mask(o.weight_decay_rules or None)
    tx = population.optimizer(
        o.name, shape=shape, b1=o.b1, b2=o.b2, eps=o.eps, decay=o.decay, weight_decay_mask=mask
    )
    given = {"learning_rate": o.learning_rate, "momentum": o.momentum}
    given.update(weight_decay=o.weight_decay, label_smoothing=s.train.label_smoothing)
    keep = population.takes(o.name)
    ms = [{**{k: v for k, v in given.items() if k in keep}, **m} for m in ms]
    states = _place(s, population.init(model, tx, train_ds.x[:1], ms))
    smoothing = _place(s, population.smoothing(ms))
    step = jax.jit(population.make_step(), donate_argnums=0)
    evaluate = population.make_eval(model.apply)
    batches = data.train_batches(train_ds, batch_size=s.train.batch_size, seed=s.seed)
    every = every or (s.hpo.eval_every if report else steps)
    bs = s.eval.batch_size
    for t in range(steps):
        keys = _place(s, population.keys(ms, t))
        states, _ = step(states, smoothing, jax.tree.map(jnp.asarray, next(batches)), keys)
        if report is not None and ((t + 1) % every == 0 or t + 1 == steps):
            accs = population.accuracy(evaluate, states, eval_ds.x, eval_ds.label, batch=bs)
            if report(t + 1, accs):
                return accs
    return population.accuracy(evaluate, states, eval_ds.x, eval_ds.label, batch=bs)


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    del progress
    timer = common.Timer()
    ms = members(s)
    parts = (common.load_split(s, "train"), common.load_split(s, "test"))
    accs = train_members(s, ms, parts)
    wall = timer()
    rows = [
        {"name": f"member_{i}", **m, "test_accuracy": float(a)}
        for i, (m, a) in enumerate(zip(ms, accs, strict=True))
    ]
    plots = [_plot(workdir, rows, s)] if "learning_rate" in s.population.space else []
    return common.report(s, rows, wall_s=wall, members=len(ms), plots=plots)


def _plot(workdir: str, rows: list[dict], s: Settings) -> str:
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    others = [k for k in s.population.space if k != "learning_rate"]
    color = [r[others[0]] for r in rows] if others else None
    sc = ax.scatter([r["learning_rate"] for r in rows], [r["test_accuracy"] for r in rows], c=color)
    if others:
        fig.colorbar(sc, ax=ax, label=others[0])
    ax.set_xscale("log")
    ax.set_xlabel(f"peak learning rate ({s.optimizer.name}, {s.schedule.name})")
    ax.set_ylabel("test accuracy")
    return report.save_plot(fig, workdir, "accuracy_vs_lr.png", legend=False)
