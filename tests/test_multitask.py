import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import data, loop, models, train
from jaxopt_ft import multitask as mt
from jaxopt_ft.multitask import weighting as wt

SPEC = {
    "digit": {"kind": "classification", "num_classes": 10},
    "parity": {"kind": "classification", "num_classes": 2},
    "slope": {"kind": "regression"},
}
TASKS = mt.make_tasks(SPEC)
NAMES = [t.name for t in TASKS]


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 40)).astype(np.float32)
    label = rng.integers(0, 10, n).astype(np.int32)
    return {
        "x": x,
        "targets": {
            "digit": label,
            "parity": label % 2,
            "slope": rng.normal(size=n).astype(np.float32),
        },
    }


def _model():
    return mt.MultiTaskModel(models.get("mlp", hidden=(16, 16)), TASKS)


def _init(method, tx=None, **kw):
    """A fresh state (`loop.fit` donates it, so tests that fit must not share one) and the
    method with its shared layer resolved."""
    return mt.init_state(
        _model(),
        method,
        key=jax.random.PRNGKey(0),
        sample_x=np.zeros((1, 40), np.float32),
        tx=tx or optax.adam(1e-2),
        **kw,
    )


def _state(method, tx=None, **kw):
    return _init(method, tx, **kw)[0]


# --- weightings -------------------------------------------------------------------------------


def test_pcgrad_textbook_projection_and_non_conflicting_untouched():
    key = jax.random.PRNGKey(3)
    project = jax.jit(mt.pcgrad_project)
    conflicting = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # dot = -1
    # g1 - (g1.g2)/|g2|^2 g2 = (1,0) + 0.5 (-1,1); g2 - (g2.g1)/|g1|^2 g1 = (-1,1) + (1,0)
    np.testing.assert_allclose(project(conflicting, key), [[0.5, 0.5], [0.0, 1.0]], atol=1e-7)
    combined = jax.jit(mt.pcgrad)({"a": conflicting[0], "b": conflicting[1]}, key)
    np.testing.assert_allclose(combined, [0.5, 1.5], atol=1e-7)
    agreeing = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(project(agreeing, key), agreeing)
    orthogonal = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(project(orthogonal, key), orthogonal)


def test_pcgrad_three_tasks_follows_the_key_order():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(3, 5)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    got = np.asarray(jax.jit(mt.pcgrad_project)(jnp.asarray(grads), key))
    orders = [np.asarray(jax.random.permutation(k, 3)) for k in jax.random.split(key, 3)]
    for i in range(3):
        g = grads[i].astype(np.float64)
        for j in orders[i]:
            dot = g @ grads[j]
            if j != i and dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        np.testing.assert_allclose(got[i], g, rtol=1e-5, atol=1e-6)
    # Another key changes the order and, with conflicts, the result.
    other = np.asarray(mt.pcgrad_project(jnp.asarray(grads), jax.random.PRNGKey(8)))
    assert got.shape == other.shape


def test_uncertainty_loss_and_gradient_match_the_formula():
    losses = {"cls": 0.8, "reg": 2.0}
    kinds = {"cls": "classification", "reg": "regression"}
    s = {"cls": 0.3, "reg": -0.5}

    def total(s_vec, l_vec):
        return mt.uncertainty_loss(
            {"cls": l_vec[0], "reg": l_vec[1]}, {"cls": s_vec[0], "reg": s_vec[1]}, kinds=kinds
        )

    s_vec, l_vec = jnp.array([s["cls"], s["reg"]]), jnp.array([0.8, 2.0])
    value = jax.jit(total)(s_vec, l_vec)
    expected = math.exp(-0.3) * 0.8 + 0.15 + 0.5 * math.exp(0.5) * 2.0 - 0.25
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    g_s, g_l = jax.jit(jax.grad(total, argnums=(0, 1)))(s_vec, l_vec)
    np.testing.assert_allclose(
        g_s, [-math.exp(-0.3) * 0.8 + 0.5, -0.5 * math.exp(0.5) * 2.0 + 0.5], rtol=1e-6
    )
    np.testing.assert_allclose(g_l, [math.exp(-0.3), 0.5 * math.exp(0.5)], rtol=1e-6)
    # Stationary point s* = log(2 c L): log(1.6) for classification, log(2.0) for regression.
    at_opt = jax.grad(total)(jnp.array([math.log(1.6), math.log(2.0)]), l_vec)
    np.testing.assert_allclose(at_opt, [0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        mt.uncertainty_loss(losses, {"cls": 0.0, "other": 0.0}, kinds=kinds)


def test_gradnorm_update_known_step_and_renormalises_to_T():
    ones = {"a": 1.0, "b": 1.0}
    new = mt.gradnorm_update(
        ones,
        losses=ones,
        initial_losses=ones,
        grad_norms={"a": 1.0, "b": 3.0},
        alpha=1.5,
        learning_rate=0.1,
    )
    # G = (1, 3), target = mean(G) * 1 = 2: d/dw |w n - 2| = sign * n = (-1, 3) -> (1.1, 0.7),
    # then rescaled to sum to T = 2.
    np.testing.assert_allclose([new["a"], new["b"]], [1.1 * 2 / 1.8, 0.7 * 2 / 1.8], rtol=1e-6)
    rng = np.random.default_rng(1)
    step = jax.jit(
        lambda w, l0, loss, n: wt.gradnorm_step(
            w, losses=loss, initial=l0, norms=n, alpha=0.5, learning_rate=0.3
        )
    )
    for _ in range(5):
        w = step(*(jnp.asarray(rng.uniform(0.1, 3.0, 4), jnp.float32) for _ in range(4)))
        np.testing.assert_allclose(jnp.sum(w), 4.0, rtol=1e-6)
        assert bool(jnp.all(w > 0))


def test_gradnorm_alpha_pushes_the_lagging_task():
    # Equal gradient norms; task b's loss fell less, so with alpha > 0 its weight grows.
    new = mt.gradnorm_update(
        {"a": 1.0, "b": 1.0},
        losses={"a": 0.5, "b": 1.0},
        initial_losses={"a": 1.0, "b": 1.0},
        grad_norms={"a": 1.0, "b": 1.0},
        alpha=1.0,
        learning_rate=0.1,
    )
    # r = (2/3, 4/3), target = 1 * r: signs (+, -) -> w = (0.9, 1.1), already summing to 2.
    np.testing.assert_allclose([new["a"], new["b"]], [0.9, 1.1], rtol=1e-6)


def test_dwa_weights_from_known_loss_ratios():
    w = mt.dwa_weights({"a": 0.5, "b": 0.9}, {"a": 1.0, "b": 1.0}, temperature=2.0)
    e = np.exp(np.array([0.5, 0.9]) / 2.0)
    np.testing.assert_allclose([w["a"], w["b"]], 2 * e / e.sum(), rtol=1e-6)
    flat = mt.dwa_weights({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 0.5}, temperature=1.0)
    np.testing.assert_allclose([flat["a"], flat["b"]], [1.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        mt.dwa_weights({"a": 1.0}, {"a": 1.0}, temperature=0.0)


def test_dwa_windows_feed_the_weights():
    state = wt.dwa_init(2)
    update = jax.jit(lambda s, losses: wt.dwa_update(s, losses, window=2))
    seen = []
    for losses in ([1.0, 1.0], [3.0, 1.0], [1.0, 0.5], [1.0, 0.5], [0.0, 0.0]):
        seen.append(np.asarray(wt.dwa_current(state, temperature=2.0)))
        state = update(state, jnp.array(losses))
    np.testing.assert_array_equal(seen[:4], np.ones((4, 2)))  # fewer than two windows done
    # Windows: means (2, 1) then (1, 0.5): ratios (0.5, 0.5) -> equal weights.
    np.testing.assert_allclose(seen[4], [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(state.last, [1.0, 0.5])
    np.testing.assert_allclose(state.previous, [2.0, 1.0])
    expect = mt.dwa_weights({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 0.5}, temperature=2.0)
    state = update(state, jnp.array([0.0, 0.0]))  # closes the third window: means (0, 0)
    np.testing.assert_allclose(wt.dwa_current(state, temperature=2.0), list(expect.values()))


def test_equal_and_static_weights():
    losses = {"a": 1.0, "b": 2.0}
    assert {k: float(v) for k, v in mt.equal_weights(losses).items()} == {"a": 1.0, "b": 1.0}
    got = mt.static_weights(losses, {"b": 0.5, "a": 2.0})
    assert {k: float(v) for k, v in got.items()} == {"a": 2.0, "b": 0.5}
    with pytest.raises(ValueError, match=r"unknown task\(s\): \['c'\]"):
        mt.static_weights(losses, {"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match=r"missing: \['b'\]"):
        mt.static_weights(losses, {"a": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        mt.static_weights(losses, {"a": 1.0, "b": -1.0})


# --- per-task gradients and similarity --------------------------------------------------------


def test_similarity_matrix_symmetric_unit_diagonal():
    rng = np.random.default_rng(0)
    grads = {f"t{i}": {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)} for i in range(4)}
    grads["zero"] = {"w": np.zeros((3, 4)), "b": np.zeros(4)}
    m = np.asarray(jax.jit(mt.cosine_similarity)(grads))
    assert m.shape == (5, 5)
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), np.ones(5))
    flat = [np.concatenate([g["b"], g["w"].ravel()]) for g in list(grads.values())[:4]]
    expect = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in flat] for a in flat])
    np.testing.assert_allclose(m[:4, :4], expect, atol=1e-6)
    np.testing.assert_array_equal(m[4, :4], 0.0)


def test_per_task_grads_equal_separate_grads():
    state = _state(mt.Method(name="equal"))
    batch = _batch()

    def losses(params):
        out = state.apply_fn({"params": params}, batch["x"])
        return jnp.stack(
            [mt.tasks.task_loss(t, out[t.name], batch["targets"][t.name]).mean() for t in TASKS]
        )

    vec, stacked = jax.jit(lambda p: mt.per_task_grads(losses, p))(state.params)
    separate = jax.jit(lambda p: [jax.grad(lambda q, i=i: losses(q)[i])(p) for i in range(3)])
    np.testing.assert_allclose(vec, jax.jit(losses)(state.params), rtol=1e-6)
    for i, single in enumerate(separate(state.params)):
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7),
            stacked,
            single,
        )
    # A head only receives its own task's gradient.
    np.testing.assert_array_equal(stacked["heads"]["digit"]["kernel"][1], 0.0)


# --- train steps ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gradnorm", "pcgrad", "alternating"])
def test_pmap_split_batch_matches_single_device(name):
    init, method = _init(mt.Method(name=name, alternate="sampled"))  # task from the shared key
    batch = _batch(n=16)
    key = jax.random.PRNGKey(5)
    single = jax.jit(mt.make_train_step(TASKS, method, similarity_every=1))
    ref, ref_metrics = init, None
    for step in range(2):
        ref, ref_metrics = single(ref, batch, jax.random.fold_in(key, step))

    n_dev = 4
    step_fn = jax.pmap(
        mt.make_train_step(TASKS, method, similarity_every=1, axis_name="batch"),
        axis_name="batch",
        in_axes=(0, 0, None),
    )
    split = jax.tree.map(lambda a: a.reshape(n_dev, -1, *a.shape[1:]), batch)
    rep = jax.tree.map(lambda a: jnp.stack([a] * n_dev), init)
    for step in range(2):
        rep, metrics = step_fn(rep, split, jax.random.fold_in(key, step))
    got = jax.tree.map(lambda a: a[0], rep)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    jax.tree.map(close, got.params, ref.params)
    jax.tree.map(close, got.aux["weighting"], ref.aux["weighting"])
    close(got.aux["similarity"].mean(), ref.aux["similarity"].mean())
    close(metrics["loss"][0], ref_metrics["loss"])


def test_alternating_updates_trunk_and_only_the_chosen_head():
    method = mt.Method(name="alternating")
    state = _state(method)
    step = jax.jit(mt.make_train_step(TASKS, method))
    new, metrics = step(state, _batch(), jax.random.PRNGKey(0))
    assert float(metrics["weight_digit"]) == 1.0  # round robin: step 0 -> task 0
    assert not np.allclose(
        new.params["trunk"]["dense1"]["kernel"], state.params["trunk"]["dense1"]["kernel"]
    )
    assert not np.allclose(
        new.params["heads"]["digit"]["kernel"], state.params["heads"]["digit"]["kernel"]
    )
    for other in ("parity", "slope"):
        jax.tree.map(
            np.testing.assert_array_equal, new.params["heads"][other], state.params["heads"][other]
        )
        jax.tree.map(
            np.testing.assert_array_equal,
            new.opt_state["heads"][other],
            state.opt_state["heads"][other],
        )
    new2, metrics = step(new, _batch(seed=1), jax.random.PRNGKey(1))
    assert float(metrics["weight_parity"]) == 1.0
    jax.tree.map(
        np.testing.assert_array_equal, new2.params["heads"]["digit"], new.params["heads"]["digit"]
    )


def test_fit_resumes_method_state(tmp_path):
    method = _init(mt.Method(name="gradnorm"))[1]
    step = mt.make_train_step(TASKS, method, similarity_every=2)

    def batches(start):
        k = start
        while True:
            yield _batch(seed=k)
            k += 1

    kw = dict(steps=6, key=jax.random.PRNGKey(2), progress=False)
    full, _ = loop.fit(_state(method), step, batches, **kw)
    loop.fit(_state(method), step, batches, workdir=str(tmp_path), **{**kw, "steps": 3})
    resumed, _ = loop.fit(_state(method), step, batches, workdir=str(tmp_path), **kw)
    weighting, similarity = resumed.aux["weighting"], resumed.aux["similarity"]
    assert isinstance(weighting, mt.GradNormState)
    assert isinstance(similarity, mt.SimilarityState)
    assert int(similarity.count) == int(full.aux["similarity"].count) == 3
    for a, b in ((resumed.params, full.params), (weighting, full.aux["weighting"])):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    np.testing.assert_allclose(jnp.sum(weighting.weights), 3.0, rtol=1e-6)


# --- tasks, model and input errors ------------------------------------------------------------


def test_builtin_targets_are_computed_from_the_data():
    x = np.stack([np.linspace(-1, 1, 40), np.zeros(40), 3 + np.linspace(2, 0, 40)]).astype(
        np.float32
    )
    ds = data.Dataset(x=x, label=np.array([3, 8, 5], np.int32), num_classes=10, name="mnist1d")
    assert set(data.available_targets("mnist1d")) == {"digit", "parity", "large", "slope"}
    y = data.derive_targets(ds, ["digit", "parity", "large", "slope"])
    np.testing.assert_array_equal(y["parity"], [1, 0, 1])
    np.testing.assert_array_equal(y["large"], [0, 1, 1])
    raw = np.array([2.0, 0.0, -2.0])  # slopes against positions in [-0.5, 0.5]
    np.testing.assert_allclose(y["slope"], (raw - raw.mean()) / raw.std(), atol=1e-6)
    img = data.Dataset(
        x=np.array([np.full((8, 8, 1), 1.0), np.full((8, 8, 1), 3.0)], np.float32),
        label=np.array([0, 1], np.int32),
        num_classes=10,
        name="digits",
    )
    ink = data.derive_targets(img, ["ink"])["ink"]
    np.testing.assert_allclose(ink, [-1.0, 1.0])


def test_bad_task_declarations():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        mt.make_tasks({"digit": {"kind": "classification"}})
    with pytest.raises(ValueError, match="kind='ranking'"):
        mt.make_tasks({"digit": {"kind": "ranking"}})
    with pytest.raises(ValueError, match="loss='mse'"):
        mt.make_tasks({"digit": {"kind": "classification", "num_classes": 10, "loss": "mse"}})
    with pytest.raises(ValueError, match="unknown key"):
        mt.make_tasks({"digit": {"kind": "regression", "weight": 2}})
    with pytest.raises(ValueError, match="non-empty"):
        mt.make_tasks({})
    ds = data.Dataset(np.zeros((2, 40), np.float32), np.zeros(2, np.int32), 10, "mnist1d")
    with pytest.raises(ValueError, match="'ink' has no labels on dataset 'mnist1d'"):
        data.derive_targets(ds, ["ink"])
    with pytest.raises(ValueError, match="Unknown method"):
        mt.Method(name="mgda_plus")
    with pytest.raises(ValueError, match="window"):
        mt.Method(name="dwa", window=0)


def test_missing_labels_head_and_static_weights_errors():
    state = _state(mt.Method(name="equal"))
    step = mt.make_train_step(TASKS, mt.Method(name="equal"))
    batch = _batch()
    del batch["targets"]["slope"]
    with pytest.raises(ValueError, match=r"\['slope'\] have no labels"):
        step(state, batch, jax.random.PRNGKey(0))
    extra = mt.make_tasks({**SPEC, "large": {"kind": "classification", "num_classes": 2}})
    with pytest.raises(ValueError, match=r"no head for \['large'\]"):
        mt.make_train_step(extra, mt.Method(name="equal"))(state, _batch(), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"unknown task\(s\): \['large'\]"):
        mt.make_train_step(
            TASKS,
            mt.Method(
                name="static", static_weights={"digit": 1, "parity": 1, "slope": 1, "large": 1}
            ),
        )
    with pytest.raises(ValueError, match="shared_layer"):
        _state(mt.Method(name="gradnorm", shared_layer="conv9/kernel"))


class _Trunk(nn.Module):
    """Layers created in anti-alphabetical order, so sorted paths would pick the wrong one."""

    @nn.compact
    def __call__(self, x, *, train=False, features_only=False):
        h = nn.relu(nn.Dense(8, name="z_first")(x))
        return nn.Dense(4, name="a_last")(h)


def test_last_shared_layer_follows_creation_order():
    assert mt.last_shared_layer(_state(mt.Method()).params["trunk"]) == "dense2/kernel"
    model = mt.MultiTaskModel(_Trunk(), TASKS[:1])
    params, _ = train.init_model(model, jax.random.PRNGKey(0), np.zeros((1, 3)))
    assert mt.last_shared_layer(params["trunk"]) == "a_last/kernel"
    assert set(params) == {"trunk", "heads"} and set(params["heads"]) == {"digit"}
    assert params["heads"]["digit"]["kernel"].shape == (4, 10)


def test_alternating_follows_the_declared_task_order_not_the_sorted_one():
    # Declared digit, slope, parity: pytrees sort heads (digit, parity, slope), tasks do not.
    spec = {"digit": SPEC["digit"], "slope": SPEC["slope"], "parity": SPEC["parity"]}
    tasks = mt.make_tasks(spec)
    model = mt.MultiTaskModel(models.get("mlp", hidden=(16, 16)), tasks)
    state, method = mt.init_state(
        model, mt.Method(name="alternating"), key=jax.random.PRNGKey(0),
        sample_x=np.zeros((1, 40), np.float32), tx=optax.adam(1e-2),
    )  # fmt: skip
    step = jax.jit(mt.make_train_step(tasks, method))
    before = jax.tree.map(np.asarray, state.params["heads"])
    state, _ = step(state, _batch(), jax.random.PRNGKey(0))  # step 0: digit
    state, metrics = step(state, _batch(seed=1), jax.random.PRNGKey(1))  # step 1: slope
    assert float(metrics["weight_slope"]) == 1.0
    moved = {
        n: not np.array_equal(np.asarray(state.params["heads"][n]["kernel"]), before[n]["kernel"])
        for n in ("digit", "slope", "parity")
    }
    assert moved == {"digit": True, "slope": True, "parity": False}
