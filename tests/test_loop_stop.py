"""loop.fit under a stop request (what SIGTERM / SIGINT do) and with a non-finite model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toys import MLP as _MLP
from toys import data as _data

from jaxopt_ft import checkpoint, loop, stopping, train


def _batches(x, label, *, stop_at=None, bs=16):
    """Batch k depends only on k; asks the loop to stop when the batch of ``stop_at`` is read."""

    def make(start):
        step = start
        while True:
            if step + 1 == stop_at:
                stopping.request()
            idx = np.random.default_rng([0, step]).choice(len(x), bs, replace=False)
            yield {"x": x[idx], "label": label[idx]}
            step += 1

    return make


def _state(tx=None):
    x, _ = _data()
    params, bs = train.init_model(_MLP(), jax.random.PRNGKey(0), x[:1])
    return train.TrainState.create(
        apply_fn=_MLP().apply, params=params, tx=tx or optax.adam(1e-2), batch_stats=bs
    )


def _fit(workdir, batches, steps=30, tx=None):
    return loop.fit(
        _state(tx),
        train.make_train_step(),
        batches,
        steps=steps,
        key=jax.random.PRNGKey(3),
        workdir=workdir,
        checkpoint_every=0,  # only at the end: the stop must save on its own
        log_every=5,
        progress=False,
    )


def test_stop_saves_the_step_reached_and_resume_is_exact(tmp_path):
    x, label = _data()
    full, _ = _fit(None, _batches(x, label))
    stopping.clear()
    with pytest.raises(
        stopping.Interrupted, match="checkpoint at step 13 of phase 'train'"
    ) as info:
        _fit(str(tmp_path), _batches(x, label, stop_at=13))
    assert info.value.step == 13 and info.value.saved
    assert checkpoint.Checkpointer(tmp_path / "checkpoints" / "train").all_steps() == [13]
    # A stop requested before a phase starts ends it at once, with nothing new to save.
    with pytest.raises(stopping.Interrupted, match="at step 13"):
        _fit(str(tmp_path), _batches(x, label))
    stopping.clear()
    resumed, _ = _fit(str(tmp_path), _batches(x, label))
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(5, 31, 5))


def _reject(constant):
    raise ValueError(f"bare {constant} in metrics.jsonl")


def test_nonfinite_model_is_an_error_and_metrics_stay_json(tmp_path):
    x, label = _data()
    poison = optax.chain(
        optax.sgd(1e-2), optax.stateless(lambda u, p: jax.tree.map(lambda v: v * jnp.nan, u))
    )
    with pytest.raises(
        loop.NonFiniteModelError, match=r"step 10 with non-finite parameters \("
    ) as info:
        _fit(str(tmp_path), _batches(x, label), steps=10, tx=poison)
    assert (
        "dense1/kernel" in str(info.value)
        and "1 more" in str(info.value)
        and "\n" not in str(info.value)
    )
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    recs = [json.loads(line, parse_constant=_reject) for line in lines]
    assert [r["step"] for r in recs] == [5, 10] and recs[-1]["loss"] is None
    # The non-finite model is saved, for inspection.
    assert checkpoint.Checkpointer(tmp_path / "checkpoints" / "train").all_steps() == [10]
