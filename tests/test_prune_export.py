"""Finalizing, sparse export to disk and the sparsity summary."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_ft import prune

PARAMS = {
    "dense1": {
        "kernel": jnp.array([[0.5, -2.0, 1.0], [-0.1, 3.0, -0.7]]),
        "bias": jnp.array([1.0, -1.0, 0.5]),
    },
    "dense2": {"kernel": jnp.array([[4.0], [-2.5], [0.3]]), "bias": jnp.array([0.0])},
}


def test_finalize_is_plain_params_with_zeros():
    masks = prune.compute_masks(PARAMS, sparsity=0.5)
    final = prune.finalize(PARAMS, masks)
    np.testing.assert_array_equal(final["dense2"]["kernel"], [[4.0], [0.0], [0.0]])
    assert final["dense2"]["kernel"].dtype == jnp.float32


@pytest.mark.parametrize("fmt", ["bitmask", "indices"])
def test_sparse_export_round_trips(tmp_path, fmt):
    final = prune.finalize(PARAMS, prune.compute_masks(PARAMS, sparsity=0.5))
    path = os.fspath(tmp_path / "model.npz")
    size = prune.export_sparse(final, path, format=fmt)
    assert size == os.path.getsize(path) > 0
    back = prune.load_sparse(path)
    assert set(back) == {"dense1", "dense2"} and set(back["dense1"]) == {"kernel", "bias"}
    for name in ("dense1", "dense2"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(back[name][leaf], final[name][leaf])
            assert back[name][leaf].dtype == np.float32
    like = prune.load_sparse(path, like=PARAMS)
    np.testing.assert_array_equal(like["dense1"]["kernel"], final["dense1"]["kernel"])


def test_sparse_export_is_smaller_than_dense(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    params = {"dense": {"kernel": jnp.asarray(w)}}
    final = prune.finalize(params, prune.compute_masks(params, sparsity=0.9))
    dense_path = os.fspath(tmp_path / "dense.npz")
    np.savez(dense_path, w=w)
    dense = os.path.getsize(dense_path)
    bitmask = prune.export_sparse(final, os.fspath(tmp_path / "b.npz"), format="bitmask")
    indices = prune.export_sparse(final, os.fspath(tmp_path / "i.npz"), format="indices")
    nonzero = int(np.count_nonzero(np.asarray(final["dense"]["kernel"])))
    assert nonzero == 6554  # 65536 - round(0.9 * 65536)
    # Values (4 B each) plus 1 bit per weight, or a 2-byte index per value, plus headers.
    assert 4 * nonzero + 65536 // 8 < bitmask < 4 * nonzero + 65536 // 8 + 2048
    assert 6 * nonzero < indices < 6 * nonzero + 2048
    assert bitmask < dense / 7


def test_export_bad_inputs(tmp_path):
    assert prune.EXPORT_FORMATS == ("bitmask", "indices")
    with pytest.raises(ValueError, match="Unknown format 'csr'"):
        prune.export_sparse(PARAMS, os.fspath(tmp_path / "m.npz"), format="csr")
    with pytest.raises(ValueError, match="must end in '.npz'"):
        prune.export_sparse(PARAMS, os.fspath(tmp_path / "m.bin"))


def test_summary_rows_and_table():
    masks = prune.compute_masks(PARAMS, sparsity=0.5)
    rows = prune.summary(PARAMS, masks, prunable=prune.select_prunable(PARAMS))
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == [
        "dense1/bias",
        "dense1/kernel",
        "dense2/bias",
        "dense2/kernel",
        "total (prunable)",
        "total",
    ]
    assert by_name["dense1/kernel"] == {
        "name": "dense1/kernel",
        "shape": (2, 3),
        "params": 6,
        "nonzero": 3,
        "sparsity": 0.5,
        "prunable": True,
    }
    # dense2/bias is 0.0 in the params, so it counts as zero although its mask keeps it.
    assert by_name["dense2/bias"]["nonzero"] == 0
    assert by_name["total (prunable)"]["params"] == 9
    assert by_name["total (prunable)"]["nonzero"] == 4
    assert by_name["total"]["nonzero"] == 7
    assert by_name["total"]["sparsity"] == pytest.approx(6 / 13)
    table = prune.format_summary(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["name", "shape", "params", "nonzero", "sparsity"]
    assert lines[3].split() == ["dense1/kernel", "2x3", "6", "3", "50.00%"]
    assert lines[-1].split() == ["total", "-", "13", "7", "46.15%"]


def test_summary_rejects_mismatched_masks():
    with pytest.raises(ValueError, match="dense2"):
        prune.summary(PARAMS, {"dense1": prune.dense_masks(PARAMS)["dense1"]})
