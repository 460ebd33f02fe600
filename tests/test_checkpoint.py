import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import checkpoint

PARAMS = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}


def _tree():
    tx = optax.adam(1e-3)
    return {
        "params": PARAMS,
        "opt_state": tx.init(PARAMS),
        "mask": {"k": jnp.array([True, False, True])},
        "q": {"v": jnp.array([-7, 3, 127], jnp.int8)},
        "step": jnp.array(5, jnp.int32),
    }


def test_roundtrip_namedtuples_and_dtypes(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    tree = _tree()
    ck.save(5, tree)
    step, restored = ck.restore(_tree())
    assert step == 5
    assert type(restored["opt_state"][0]) is type(tree["opt_state"][0])  # ScaleByAdamState
    assert restored["mask"]["k"].dtype == jnp.bool_
    assert restored["q"]["v"].dtype == jnp.int8
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_directory_restores_none(tmp_path):
    assert checkpoint.Checkpointer(tmp_path / "ck").restore(_tree()) is None


def test_keeps_last_n(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "ck", max_to_keep=2)
    for s in (1, 2, 3):
        ck.save(s, _tree())
    assert ck.all_steps() == [2, 3]


def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    t1 = _tree()
    ck.save(1, t1)
    t2 = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.bool_ else x, _tree())
    ck.save(2, t2)
    # Truncate every data file of the latest checkpoint.
    for root, _, files in os.walk(tmp_path / "ck" / "2"):
        for f in files:
            if not f.startswith("_CHECKPOINT_METADATA"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(0)
    step, restored = checkpoint.Checkpointer(tmp_path / "ck").restore(_tree())
    assert step == 1
    np.testing.assert_array_equal(restored["params"]["dense"]["kernel"], PARAMS["dense"]["kernel"])
    assert "cannot be restored" in caplog.text


def test_other_model_is_a_clear_error(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    ck.save(1, _tree())
    other = _tree()
    other["params"] = {"conv": {"kernel": jnp.zeros((3, 3))}}
    other["opt_state"] = optax.adam(1e-3).init(other["params"])
    with pytest.raises(ValueError, match="No checkpoint .* can be restored"):
        ck.restore(other)


def test_bad_max_to_keep(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        checkpoint.Checkpointer(tmp_path, max_to_keep=0)
