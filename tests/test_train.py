import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toys import BN as _BN
from toys import MLP as _MLP
from toys import data as _data

from jaxopt_ft import loop, train


def _batches(x, label, bs=16):
    def make(start):
        step = start
        while True:
            rng = np.random.default_rng([0, step])
            idx = rng.choice(len(x), bs, replace=False)
            yield {"x": x[idx], "label": label[idx]}
            step += 1

    return make


def _state(model, tx=None):
    x, _ = _data()
    params, bs = train.init_model(model, jax.random.PRNGKey(0), x[:1])
    return train.TrainState.create(
        apply_fn=model.apply, params=params, tx=tx or optax.adam(1e-2), batch_stats=bs
    )


def test_cross_entropy_matches_formula():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    expected = -np.log(np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum())
    np.testing.assert_allclose(train.cross_entropy(logits, jnp.array([0])), [expected], rtol=1e-6)
    soft = train.cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(soft, [expected], rtol=1e-6)
    smooth = train.cross_entropy(logits, jnp.array([0]), label_smoothing=0.3)
    logp = jax.nn.log_softmax(logits)[0]
    target = np.array([0.8, 0.1, 0.1])
    np.testing.assert_allclose(smooth, [-(target * logp).sum()], rtol=1e-6)


def test_fit_learns_and_logs(tmp_path):
    x, label = _data()
    state, summary = loop.fit(
        _state(_MLP()),
        train.make_train_step(),
        _batches(x, label),
        steps=200,
        key=jax.random.PRNGKey(1),
        workdir=str(tmp_path),
        log_every=50,
        progress=False,
    )
    assert int(state.step) == 200
    ev = train.evaluate(
        state.apply_fn, state.variables(), [{"x": x, "label": label, "mask": np.ones(len(x))}]
    )
    assert ev["test_accuracy"] > 0.9
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [50, 100, 150, 200]
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert summary["final_train_loss"] == recs[-1]["loss"]


def test_resume_is_exact(tmp_path):
    x, label = _data()
    step = train.make_train_step()
    key = jax.random.PRNGKey(3)
    full, _ = loop.fit(_state(_MLP()), step, _batches(x, label), steps=40, key=key, progress=False)
    # First run "dies" after 25 steps with a checkpoint at 20; the rerun resumes from 20.
    loop.fit(
        _state(_MLP()),
        step,
        _batches(x, label),
        steps=25,
        key=key,
        workdir=str(tmp_path),
        checkpoint_every=10,
        log_every=5,
        progress=False,
    )
    # Drop the end-of-phase checkpoint at 25 so the resume starts at 20 (as after a kill).
    from jaxopt_ft import checkpoint

    checkpoint.Checkpointer(tmp_path / "checkpoints" / "train").delete_after(20)
    resumed, _ = loop.fit(
        _state(_MLP()),
        step,
        _batches(x, label),
        steps=40,
        key=key,
        workdir=str(tmp_path),
        checkpoint_every=10,
        log_every=5,
        progress=False,
    )
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(full.opt_state), jax.tree.leaves(resumed.opt_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(5, 41, 5))  # no duplicated or missing step


def test_batchnorm_stats_move_in_training_only():
    x, label = _data()
    state = _state(_BN())
    before = state.batch_stats
    step = jax.jit(train.make_train_step())
    new, _ = step(state, {"x": x[:16], "label": label[:16]}, jax.random.PRNGKey(0))
    assert not np.allclose(new.batch_stats["bn1"]["mean"], before["bn1"]["mean"])
    # Evaluation normalises with the running statistics: the batch's own would differ.
    ev = train.evaluate(new.apply_fn, new.variables(), [{"x": x[:16], "label": label[:16]}])
    logits = new.apply_fn(new.variables(), x[:16], train=False)
    expect = float(train.cross_entropy(logits, label[:16]).mean())
    assert ev["test_loss"] == pytest.approx(expect, rel=1e-5)


def test_eval_mask_ignores_padding():
    x, label = _data()
    state = _state(_MLP())
    mask = np.zeros(len(x), np.float32)
    mask[:10] = 1
    v = state.variables()
    ev = train.evaluate(state.apply_fn, v, [{"x": x, "label": label, "mask": mask}])
    ref = train.evaluate(
        state.apply_fn, v, [{"x": x[:10], "label": label[:10], "mask": np.ones(10)}]
    )
    assert ev["test_accuracy"] == pytest.approx(ref["test_accuracy"])
    assert ev["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-5)


def test_empty_eval_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        state = _state(_MLP())
        train.evaluate(state.apply_fn, state.variables(), [])
