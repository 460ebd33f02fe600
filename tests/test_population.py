"""Vmapped populations train each member exactly as it would train alone."""

import itertools
import os

import jax
import numpy as np
import optax
import pytest
from helpers import load_config

from jaxopt_ft import data, experiments, models, optim, population, train

MEMBERS = [
    {"learning_rate": 0.3, "momentum": 0.9, "label_smoothing": 0.0, "seed": 0},
    {"learning_rate": 0.05, "momentum": 0.5, "label_smoothing": 0.1, "seed": 1},
    {"learning_rate": 0.01, "momentum": 0.0, "label_smoothing": 0.2, "seed": 2},
]
STEPS = 100


@pytest.fixture(scope="module")
def setup():
    ds = data.load("mnist1d", "train")
    model = models.get("cnn", channels=(8, 8, 8))
    batches = list(itertools.islice(data.train_batches(ds, batch_size=50, seed=0), STEPS))
    return model, batches


def _sequential(model, batches, m, name, shape_name):
    lr = optim.schedule(shape_name, learning_rate=m["learning_rate"], steps=STEPS)
    tx = optim.make(name, learning_rate=lr, momentum=m.get("momentum", 0.9))
    params, stats = train.init_model(model, jax.random.PRNGKey(m["seed"]), batches[0]["x"][:1])
    state = train.TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=stats)
    loss = train.classification_loss(label_smoothing=m["label_smoothing"])
    step = jax.jit(train.make_train_step(loss))
    base = jax.random.PRNGKey(m["seed"] + 1)
    for t, b in enumerate(batches):
        state, metrics = step(state, b, jax.random.fold_in(base, t))
    return state, float(metrics["loss"])


@pytest.mark.parametrize("shape_name", ["cosine"])
def test_members_equal_sequential_runs(setup, shape_name):
    model, batches = setup
    shape = optim.schedule(shape_name, learning_rate=1.0, steps=STEPS)
    tx = population.optimizer("momentum", shape=shape)
    states = population.init(model, tx, batches[0]["x"][:1], MEMBERS)
    step = jax.jit(population.make_step(), donate_argnums=0)
    ls = population.smoothing(MEMBERS)
    for t, b in enumerate(batches):
        states, metrics = step(states, ls, b, population.keys(MEMBERS, t))
    for i, m in enumerate(MEMBERS):
        alone, loss = _sequential(model, batches, m, "momentum", shape_name)
        got = population.member(states.params, i)
        diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), got, alone.params)
        assert max(jax.tree.leaves(diff)) <= 1e-5, (i, diff)
        np.testing.assert_allclose(float(metrics["loss"][i]), loss, atol=1e-5)
    # The members really differ (the hyperparameters reached them).
    assert len({round(float(v), 4) for v in metrics["loss"]}) == len(MEMBERS)


def test_adamw_weight_decay_per_member(setup):
    model, batches = setup
    members = [{"learning_rate": 1e-2, "weight_decay": wd, "seed": 0} for wd in (0.0, 0.5)]
    tx = population.optimizer("adamw", shape=optax.constant_schedule(1.0))
    states = population.init(model, tx, batches[0]["x"][:1], members)
    step = jax.jit(population.make_step())
    for t, b in enumerate(batches[:20]):
        states, _ = step(states, population.smoothing(members), b, population.keys(members, t))
    norms = [float(optax.tree.norm(population.member(states.params, i))) for i in range(2)]
    assert norms[1] < norms[0]  # same seed and batches: only the decay differs


@pytest.mark.parametrize(
    "name, members, match",
    [
        ("adam", [{"weight_decay": 0.1}], "weight_decay"),
        ("sgd", [{"momentum": 0.9}], "momentum"),
        ("adamw", [], "at least one"),
        ("adamm", [{}], "adamm"),
        ("sgd", [{"learning_rate": -1.0}], "-1.0"),
    ],
)
def test_bad_members(name, members, match):
    with pytest.raises(ValueError, match=match):
        population.check_members(name, members)


POP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _population_config(**overrides):
    base = {
        "model.name": "logistic",
        "train.steps": 30,
        "train.batch_size": 96,
        "schedule.warmup_steps": 3,
        "population.size": 4,
        "population.space": {
            "learning_rate": ("log", 0.01, 1.0),
            "momentum": ("uniform", 0.5, 0.9),
        },
        "population.seeds": (0, 1),
    }
    return load_config(os.path.join(POP, "mnist1d_population.py"), overrides={**base, **overrides})


def test_population_experiment_grid(tmp_path):
    module, settings = experiments.prepare(_population_config())
    report = module.run(settings, str(tmp_path))
    rows = report["rows"]
    assert len(rows) == 8 and report["members"] == 8
    lrs = sorted({r["learning_rate"] for r in rows})
    np.testing.assert_allclose(lrs, [0.01, 1.0], rtol=1e-6)  # 2 points per axis, log-spaced
    assert sorted({r["momentum"] for r in rows}) == pytest.approx([0.5, 0.9])
    assert sorted({r["seed"] for r in rows}) == [0, 1]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)
    assert (tmp_path / "accuracy_vs_lr.png").stat().st_size > 1000
    # The same population split over 8 devices, one member each, trains the same members.
    module, sharded = experiments.prepare(_population_config(**{"parallel.mode": "sharding"}))
    again = module.run(sharded, str(tmp_path))["rows"]
    np.testing.assert_allclose(
        [r["test_accuracy"] for r in again], [r["test_accuracy"] for r in rows], atol=2e-3
    )


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"population.size": 5}, "population.size=5 is not a grid"),
        ({"population.space": {"learning_rate": ("log", 1.0, 0.1)}}, "inverted"),
        ({"population.space": {"batch_size": ("choice", (32, 64))}}, "'batch_size'"),
        ({"optimizer.name": "adam"}, "momentum"),
        (
            {"parallel.mode": "sharding", "train.batch_size": 96, "population.seeds": (0, 1, 2)},
            "12 members does not divide over 8 devices",
        ),
        ({"parallel.mode": "pmap", "train.batch_size": 96}, "cannot split a population"),
    ],
)
def test_bad_population_inputs(overrides, match):
    with pytest.raises(ValueError, match=match):
        experiments.prepare(_population_config(**overrides))
