"""Vmapped populations train each member exactly as it would train alone."""

import itertools

import jax
import numpy as np
import optax
import pytest

from jaxopt_ft import data, models, optim, population, train

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
