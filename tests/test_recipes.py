"""Training recipes: accumulation, clipping, weight-decay rules, EMA, the NaN/Inf guard."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toys import BN as _BN
from toys import MLP as _MLP
from toys import data as _data

from jaxopt_ft import checkpoint, loop, optim, train


def _state(model, tx):
    x, _ = _data()
    params, bs = train.init_model(model, jax.random.PRNGKey(0), x[:1])
    return train.TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=bs)


def _leaves_close(a, b, **kw):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw)


def _leaves_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ----------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_accumulation_equals_one_big_batch(name):
    x, label = _data(64)
    k, b = 4, 8
    big = _state(_MLP(), optim.make(name, learning_rate=0.1))
    acc = _state(_MLP(), optim.make(name, learning_rate=0.1, accumulate_steps=k))
    step = jax.jit(train.make_train_step())
    key = jax.random.PRNGKey(0)
    for update in range(2):  # two full updates: the accumulator must reset in between
        rows = slice(update * k * b, (update + 1) * k * b)
        big, _ = step(big, {"x": x[rows], "label": label[rows]}, key)
        for i in range(k):
            before = acc.params
            micro = slice(update * k * b + i * b, update * k * b + (i + 1) * b)
            acc, _ = step(acc, {"x": x[micro], "label": label[micro]}, key)
            if i < k - 1:
                _leaves_equal(acc.params, before)  # micro-steps do not move the params
        _leaves_close(acc.params, big.params, rtol=2e-5, atol=1e-6)
    assert int(acc.step) == 2 * k  # TrainState.step counts micro-steps


def test_accumulate_steps_must_be_positive_int():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="accumulate_steps must be an integer >= 1"):
            optim.make("sgd", learning_rate=0.1, accumulate_steps=bad)


# -------------------------------------------------------------- clipping, weight decay

PARAMS = {
    "conv1": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
    "bn1": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
    "head": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))},
}


def test_clip_by_global_norm():
    tx = optim.make("sgd", learning_rate=1.0, clip_norm=1.0)
    grads = {"a": jnp.array([6.0, 8.0])}  # norm 10
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
    np.testing.assert_allclose(updates["a"], [-0.6, -0.8], rtol=1e-6)
    small = {"a": jnp.array([0.3, 0.4])}
    updates, _ = tx.update(small, tx.init(small))
    np.testing.assert_allclose(updates["a"], [-0.3, -0.4], rtol=1e-6)


def _adamw_step(rules):
    tx = optim.make("adamw", learning_rate=0.1, weight_decay=0.5, weight_decay_rules=rules)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(PARAMS), PARAMS)
    return optax.apply_updates(PARAMS, updates)


def test_weight_decay_default_rules_touch_kernels_only():
    new = _adamw_step(None)
    # Zero gradients: only decoupled decay moves a leaf, by lr * wd * w = 0.05.
    np.testing.assert_allclose(new["conv1"]["kernel"], 0.95, rtol=1e-6)
    np.testing.assert_allclose(new["head"]["kernel"], 0.95, rtol=1e-6)
    for path in (("conv1", "bias"), ("bn1", "scale"), ("bn1", "bias"), ("head", "bias")):
        np.testing.assert_array_equal(new[path[0]][path[1]], PARAMS[path[0]][path[1]])


def test_weight_decay_custom_rules():
    new = _adamw_step([("head/kernel", True), (".*", False)])
    np.testing.assert_allclose(new["head"]["kernel"], 0.95, rtol=1e-6)
    np.testing.assert_array_equal(new["conv1"]["kernel"], PARAMS["conv1"]["kernel"])


def test_weight_decay_rule_errors():
    with pytest.raises(ValueError, match="matching no parameter"):
        _adamw_step([("nope/kernel", True), (".*", False)])
    with pytest.raises(ValueError, match="covered by no rule"):
        _adamw_step([(".*kernel", True)])
    with pytest.raises(TypeError, match="True \\(decay\\) or False"):
        optim.make("adamw", learning_rate=0.1, weight_decay_rules=[(".*", 0.5)])


# ------------------------------------------------------------------------------- EMA


def test_ema_matches_formula_and_moves_only_on_updates():
    decay = 0.8
    tx = optim.make("sgd", learning_rate=0.1, ema_decay=decay, accumulate_steps=2)
    params = {"w": jnp.array([3.0, -2.0])}
    state = tx.init(params)
    expected = np.array(params["w"])
    update = jax.jit(tx.update)
    for t in range(8):
        grads = {"w": params["w"] * (1.0 + t)}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if t % 2 == 1:  # a real update every second micro-step
            expected = decay * expected + (1 - decay) * np.asarray(params["w"])
        np.testing.assert_allclose(optim.ema_params(state)["w"], expected, rtol=1e-6)
    assert not np.allclose(expected, params["w"])


def test_ema_params_needs_an_ema():
    with pytest.raises(ValueError, match="ema_decay"):
        optim.ema_params(optax.sgd(0.1).init({"w": jnp.zeros(2)}))
    with pytest.raises(ValueError, match="ema_decay must be in"):
        optim.make("sgd", learning_rate=0.1, ema_decay=1.0)


# --------------------------------------------------------------------- NaN/Inf guard


def test_nonfinite_batch_is_skipped_and_counted():
    x, label = _data()
    state = _state(_BN(), optim.make("adam", learning_rate=1e-2, skip_nonfinite=True))
    step = jax.jit(train.make_train_step())
    key = jax.random.PRNGKey(0)
    state, m = step(state, {"x": x[:16], "label": label[:16]}, key)
    assert int(m["nonfinite_total"]) == 0
    before = train.numpy_tree(state.tree())
    bad = x[16:32].copy()
    bad[3, 2] = np.nan
    state, m = step(state, {"x": bad, "label": label[16:32]}, key)
    assert int(m["nonfinite_total"]) == 1 and int(m["nonfinite_consecutive"]) == 1
    after = train.numpy_tree(state.tree())
    _leaves_equal(after["params"], before["params"])
    _leaves_equal(after["batch_stats"], before["batch_stats"])  # no NaN running stats
    state, m = step(state, {"x": x[32:48], "label": label[32:48]}, key)
    assert int(m["nonfinite_total"]) == 1 and int(m["nonfinite_consecutive"]) == 0
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(train.numpy_tree(state.params)))
    assert not np.array_equal(state.params["head"]["kernel"], before["params"]["head"]["kernel"])


def _batches(x, label, *, nan_from=None, nan_steps=(), bs=16):
    def make(start):
        step = start
        while True:
            rng = np.random.default_rng([0, step])
            idx = rng.choice(len(x), bs, replace=False)
            xb = x[idx].copy()
            if step in nan_steps or (nan_from is not None and step >= nan_from):
                xb[0, 0] = np.inf
            yield {"x": xb, "label": label[idx]}
            step += 1

    return make


def _fit(batches, tmp_path, **kw):
    tx = optim.make("adam", learning_rate=1e-2, skip_nonfinite=True)
    return loop.fit(
        _state(_MLP(), tx),
        train.make_train_step(),
        batches,
        key=jax.random.PRNGKey(1),
        workdir=str(tmp_path),
        progress=False,
        **kw,
    )


def test_fit_skips_isolated_nonfinite_batches(tmp_path):
    x, label = _data()
    state, summary = _fit(
        _batches(x, label, nan_steps=(3, 7)),
        tmp_path,
        steps=12,
        log_every=1,
        nan_policy="stop",
        max_consecutive_nonfinite=2,
    )
    assert int(state.step) == 12 and summary["nonfinite_updates"] == 2
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    totals = [r["nonfinite_total"] for r in recs]
    assert totals == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]  # step k+1 logs batch k


def test_persistent_nonfinite_stops_and_keeps_last_checkpoint(tmp_path):
    x, label = _data()
    with pytest.raises(loop.NonFiniteError) as err:
        _fit(
            _batches(x, label, nan_from=25),
            tmp_path / "bad",
            steps=60,
            checkpoint_every=10,
            log_every=5,
            nan_policy="stop",
            max_consecutive_nonfinite=5,
        )
    message = str(err.value)
    assert "\n" not in message
    assert "step 30 " in message and "steps 26-30" in message and "step 20" in message
    ck = checkpoint.Checkpointer(tmp_path / "bad" / "checkpoints" / "train")
    assert ck.all_steps() == [10, 20]
    clean, _ = _fit(_batches(x, label), tmp_path / "clean", steps=20)
    step, tree = ck.restore(clean.tree())
    assert step == 20
    _leaves_equal(tree["params"], clean.params)
    # Under "skip" the same data trains to the end, counting every skipped update.
    state, summary = _fit(_batches(x, label, nan_from=25), tmp_path / "skip", steps=40)
    assert int(state.step) == 40 and summary["nonfinite_updates"] == 15


def test_fit_rejects_bad_policy():
    x, label = _data()
    with pytest.raises(ValueError, match="nan_policy='ignore' is not accepted; choose one of"):
        loop.fit(
            _state(_MLP(), optax.sgd(0.1)),
            train.make_train_step(),
            _batches(x, label),
            steps=1,
            key=jax.random.PRNGKey(0),
            nan_policy="ignore",
        )


def test_resume_mid_accumulation_with_ema_and_guard_is_exact(tmp_path):
    """Accumulator, EMA and guard counters live in opt_state, so checkpoints carry them."""
    x, label = _data()

    def tx():
        return optim.make(
            "adamw",
            learning_rate=1e-2,
            accumulate_steps=3,
            ema_decay=0.9,
            clip_norm=1.0,
            skip_nonfinite=True,
        )

    kw = dict(key=jax.random.PRNGKey(2), progress=False)
    batches = _batches(x, label, nan_steps=(4,))
    full, _ = loop.fit(_state(_BN(), tx()), train.make_train_step(), batches, steps=14, **kw)
    wd = str(tmp_path)
    loop.fit(
        _state(_BN(), tx()),
        train.make_train_step(),
        batches,
        steps=7,  # dies mid-accumulation (7 = 2 * 3 + 1) with a checkpoint at 7
        workdir=wd,
        **kw,
    )
    resumed, summary = loop.fit(
        _state(_BN(), tx()), train.make_train_step(), batches, steps=14, workdir=wd, **kw
    )
    _leaves_equal(train.numpy_tree(resumed.tree()), train.numpy_tree(full.tree()))
    assert summary["nonfinite_updates"] == 1
    assert not np.allclose(optim.ema_params(resumed.opt_state)["head"]["kernel"], 0.0)
