"""Tests for jaxopt_ft.quant export: orbax round trip, compact file, sparse encodings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_ft import quant
from jaxopt_ft.quant import sparse

KEY = jax.random.key(0)


def _params(density: float = 1.0) -> dict:
    k1, k2, k3 = jax.random.split(KEY, 3)
    p = {
        "conv1": {"kernel": jax.random.normal(k1, (5, 1, 16)), "bias": jnp.arange(16.0)},
        "conv2": {"kernel": jax.random.normal(k2, (3, 16, 16)), "bias": jnp.zeros(16)},
        "head": {"kernel": jax.random.normal(k3, (80, 10)), "bias": jnp.ones(10)},
    }
    if density < 1.0:
        keys = jax.random.split(jax.random.key(7), 3)
        for (name, layer), k in zip(sorted(p.items()), keys, strict=True):
            mask = jax.random.bernoulli(k, density, layer["kernel"].shape)
            p[name] = {**layer, "kernel": layer["kernel"] * mask}
    return p


RULES = [
    ("head/kernel", 8),
    ("conv1/kernel", quant.QuantSpec(bits=4, axis=None)),
    (".*kernel", 4),
    (".*", None),
]
ASYM = [(".*kernel", quant.QuantSpec(bits=8, symmetric=False)), (".*", None)]


def _assert_same_tree(a, b):
    fa = jax.tree.leaves_with_path(a)
    fb = jax.tree.leaves_with_path(b)
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (_, x), (_, y) in zip(fa, fb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("rules", [RULES, ASYM], ids=["int8+int4", "uint8"])
def test_orbax_roundtrip_keeps_dtypes(tmp_path, rules):
    q = quant.quantize_params(_params(), rules)
    nbytes = quant.save_quantized(tmp_path / "ckpt", q)
    assert nbytes == quant.directory_bytes(tmp_path / "ckpt") > 0
    r = quant.restore_quantized(tmp_path / "ckpt")
    assert isinstance(r["head"]["kernel"], quant.QArray)
    assert r["head"]["kernel"].bits == 8 and r["conv2"]["kernel"].shape == (3, 16, 16)
    want = np.int8 if rules is RULES else np.uint8
    assert r["head"]["kernel"].values.dtype == want
    _assert_same_tree(r, q)
    _assert_same_tree(quant.dequantize_params(r), quant.dequantize_params(q))


@pytest.mark.parametrize("encoding", quant.ENCODINGS)
def test_export_roundtrip_exact(tmp_path, encoding):
    q = quant.quantize_params(_params(density=0.3), RULES)
    path = tmp_path / f"m.{encoding}"
    nbytes = quant.export_quantized(path, q, encoding=encoding)
    assert nbytes == path.stat().st_size
    _assert_same_tree(quant.load_quantized(path), q)
    _assert_same_tree(quant.load_quantized(path, dequantized=True), quant.dequantize_params(q))


def test_export_dense_asymmetric_and_errors(tmp_path):
    q = quant.quantize_params(_params(), ASYM)
    quant.export_quantized(tmp_path / "a", q)
    _assert_same_tree(quant.load_quantized(tmp_path / "a"), q)
    with pytest.raises(ValueError, match="symmetric=False.*encoding='bitmask'"):
        quant.export_quantized(tmp_path / "b", q, encoding="bitmask")
    with pytest.raises(ValueError, match="encoding='zip' is unknown"):
        quant.export_quantized(tmp_path / "c", q, encoding="zip")
    (tmp_path / "d").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad magic"):
        quant.load_quantized(tmp_path / "d")


def test_sizes_and_compression(tmp_path):
    dense = _params()
    fp32 = 4 * sum(x.size for x in jax.tree.leaves(dense))
    int8 = quant.quantize_params(dense, 8)
    n8 = quant.export_quantized(tmp_path / "int8", int8)
    # magic + header length + zlib'd header, then int8 kernels + fp32 scales + fp32 biases.
    raw = (tmp_path / "int8").read_bytes()
    header = int.from_bytes(raw[4:8], "little")
    assert n8 == 8 + header + (80 + 768 + 800) + 4 * (16 + 16 + 10) + 4 * (16 + 16 + 10)
    assert header < 300
    assert quant.compression(dense, n8) == pytest.approx(fp32 / n8)
    sp = quant.quantize_params(_params(density=0.1), 4)
    n_mask = quant.export_quantized(tmp_path / "mask", sp, encoding="bitmask")
    n_rel = quant.export_quantized(tmp_path / "rel", sp, encoding="relative")
    n_dense4 = quant.export_quantized(tmp_path / "d4", sp)
    assert n_rel < n_mask < n_dense4 < n8


def test_relative_encoding_known_entries():
    q = np.zeros(40, np.int8)
    q[[20, 22, 39]] = [3, -5, 7]
    gaps, vals = sparse.relative_entries(q)
    # 20 zeros: one filler (advance 16) then gap 4; 1 zero; 16 zeros: a filler then gap 0.
    np.testing.assert_array_equal(gaps, [15, 4, 1, 15, 0])
    np.testing.assert_array_equal(vals, [0, 3, -5, 0, 7])
    data, n = sparse.encode_relative(q, bits=4)
    assert n == 5 and data.nbytes == 5 and data[1] == (4 | (3 << 4))
    np.testing.assert_array_equal(sparse.decode_relative(data, n, 40, bits=4), q)


def test_bitmask_encoding_known_bytes():
    q = np.array([0, 2, 0, 0, 0, 0, 0, -1, 5], np.int8)
    mask, vals = sparse.encode_bitmask(q, bits=8)
    np.testing.assert_array_equal(mask, [0b01000001, 0b10000000])
    np.testing.assert_array_equal(vals.view(np.int8), [2, -1, 5])
    np.testing.assert_array_equal(sparse.decode_bitmask(mask, vals, 9, bits=8), q)


def test_bitmask_encoding_keeps_float_values_without_bits():
    w = np.array([[0.0, -1.5], [0.25, 0.0], [0.0, 3.0]], np.float32)
    mask, vals = sparse.encode_bitmask(w)
    np.testing.assert_array_equal(mask, [0b01100100])
    assert vals.dtype == np.float32 and vals.tolist() == [-1.5, 0.25, 3.0]
    back = sparse.decode_bitmask(mask, vals, w.size)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.reshape(w.shape), w)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.5, 1.0])
def test_sparse_encodings_roundtrip(bits, density):
    rng = np.random.default_rng(int(density * 100) + bits)
    qmax = 2 ** (bits - 1) - 1
    n = 1001
    q = rng.integers(-qmax, qmax + 1, n) * (rng.random(n) < density)
    q = q.astype(np.int8)
    mask, vals = sparse.encode_bitmask(q, bits=bits)
    np.testing.assert_array_equal(sparse.decode_bitmask(mask, vals, n, bits=bits), q)
    data, entries = sparse.encode_relative(q, bits=bits)
    np.testing.assert_array_equal(sparse.decode_relative(data, entries, n, bits=bits), q)
    nnz = int(np.count_nonzero(q))
    assert mask.nbytes == (n + 7) // 8
    assert vals.nbytes == ((nnz + 1) // 2 if bits <= 4 else nnz)
    assert entries >= nnz
