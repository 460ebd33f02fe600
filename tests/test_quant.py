"""Tests for jaxopt_ft.quant: fake_quant, QArray, PTQ, calibration, QAT, int8 inference."""

from __future__ import annotations

import re

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_ft import quant

KEY = jax.random.key(0)
# One compile per (shape, mode) instead of one per eager op: keeps the suite fast on 2 CPUs.
FQ = jax.jit(quant.fake_quant, static_argnames=("bits", "axis", "symmetric"))
QUANTIZE = jax.jit(quant.quantize, static_argnames=("bits", "axis", "symmetric"))
DEQUANTIZE = jax.jit(quant.dequantize)


def np_fake_quant(x, bits, axis, symmetric, bounds=None):
    """Plain numpy reference, written independently of the library.

    Divisions are reciprocal multiplications, as XLA compiles them (see quant/core.py).
    """
    x = np.asarray(x, np.float32)
    red = tuple(i for i in range(x.ndim) if axis is None or i != axis % x.ndim)
    if bounds is None:
        lo, hi = x.min(axis=red, keepdims=True), x.max(axis=red, keepdims=True)
    else:
        lo, hi = (np.float32(b) for b in bounds)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = np.maximum(np.abs(lo), np.abs(hi)) * np.float32(1 / qmax)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        q = np.clip(np.round(x * (np.float32(1) / scale)), -qmax, qmax)
        return (q * scale).astype(np.float32)
    qmax = 2**bits - 1
    lo, hi = np.minimum(lo, np.float32(0)), np.maximum(hi, np.float32(0))
    scale = ((hi - lo) * np.float32(1 / qmax)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    inv = np.float32(1) / scale
    zp = np.clip(np.round(-lo * inv), 0, qmax).astype(np.float32)
    q = np.clip(np.round(x * inv) + zp, 0, qmax)
    return ((q - zp) * scale).astype(np.float32)


# --- fake_quant ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 16])
@pytest.mark.parametrize("axis", [None, -1, 0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_equals_numpy_reference(bits, axis, symmetric):
    rng = np.random.default_rng(bits)
    x = (rng.normal(size=(6, 5, 7)) * rng.uniform(0.1, 3, size=(1, 1, 7)) + 0.3).astype(np.float32)
    got = FQ(x, bits=bits, axis=axis, symmetric=symmetric)
    np.testing.assert_array_equal(np.asarray(got), np_fake_quant(x, bits, axis, symmetric))


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_with_bounds_equals_reference(symmetric):
    x = np.linspace(-3, 3, 61, dtype=np.float32)
    got = quant.fake_quant(x, bits=4, symmetric=symmetric, bounds=(-1.0, 2.0))
    np.testing.assert_array_equal(np.asarray(got), np_fake_quant(x, 4, None, symmetric, (-1, 2)))


def test_fake_quant_known_values_round_half_even():
    x = jnp.array([-1.0, -0.5, 0.5, 1.5, 2.5, 3.0])  # bits=3: qmax 3, scale 1
    np.testing.assert_array_equal(quant.fake_quant(x, bits=3), [-1, 0, 0, 2, 2, 3])


def test_fake_quant_asymmetric_known_values():
    # range [0, 3] (widened to include 0), 2 bits: scale 1, zero point 0, levels 0..3.
    x = jnp.array([0.4, 0.6, 1.5, 2.5, 3.0])
    np.testing.assert_array_equal(quant.fake_quant(x, bits=2, symmetric=False), [0, 1, 2, 2, 3])


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("bits", [2, 8])
def test_zero_maps_to_zero(symmetric, axis, bits):
    x = jax.random.uniform(KEY, (8, 6), minval=0.3, maxval=2.0)  # all positive ...
    x = np.asarray(x.at[::2, :].set(0.0).at[3, 2].set(-0.7))  # ... plus zeros and a negative
    y = FQ(x, bits=bits, axis=axis, symmetric=symmetric)
    assert np.all(np.asarray(y)[x == 0] == 0)
    q = QUANTIZE(x, bits=bits, axis=axis, symmetric=symmetric)
    assert np.all(np.asarray(DEQUANTIZE(q))[x == 0] == 0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_idempotent(symmetric, bits):
    x = jax.random.normal(KEY, (32, 8))
    y = FQ(x, bits=bits, axis=-1, symmetric=symmetric)
    # Same range: bit-exact. Range recomputed from y: equal up to one float ulp of scale.
    lo, hi = jnp.min(x, axis=0), jnp.max(x, axis=0)
    yy = FQ(y, bits=bits, axis=-1, symmetric=symmetric, bounds=(lo, hi))
    np.testing.assert_array_equal(yy, y)
    np.testing.assert_allclose(
        FQ(y, bits=bits, axis=-1, symmetric=symmetric), y, rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_ste_gradient_is_one_inside_zero_outside(symmetric):
    x = jnp.array([-3.0, -1.5, -0.9, -0.2, 0.0, 0.4, 1.9, 2.5, 7.0])
    # symmetric: range [-2, 2]; asymmetric (bounds [-1, 2]): [-1, 2] up to rounding of zp.
    inside = [0, 1, 1, 1, 1, 1, 1, 0, 0] if symmetric else [0, 0, 1, 1, 1, 1, 1, 0, 0]
    bounds = (-2.0, 2.0) if symmetric else (-1.0, 2.0)
    g = jax.jit(
        jax.grad(lambda v: jnp.sum(quant.fake_quant(v, bits=8, symmetric=symmetric, bounds=bounds)))
    )(x)
    np.testing.assert_array_equal(g, inside)
    # Without bounds the range is the data's own: every entry is inside.
    g = jax.grad(lambda v: jnp.sum(quant.fake_quant(v, bits=4, axis=0, symmetric=symmetric)))(
        x[:, None] * jnp.ones((1, 3))
    )
    np.testing.assert_array_equal(g, np.ones((9, 3)))


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float32, (4, 6), elements=st.floats(-1e3, 1e3, width=32)),
    bits=st.sampled_from([2, 3, 4, 8, 16]),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
)
def test_quantize_dequantize_error_at_most_half_a_step(x, bits, symmetric, per_channel):
    axis = -1 if per_channel else None
    q = QUANTIZE(x, bits=bits, axis=axis, symmetric=symmetric)
    err = np.abs(np.asarray(DEQUANTIZE(q), np.float64) - x)
    scale = np.broadcast_to(np.asarray(q.scale, np.float64), x.shape)
    # Half a step, plus float32 rounding of x * (1 / scale) and of q * scale.
    assert np.all(err <= scale / 2 + 4e-7 * (np.abs(x) + scale))
    np.testing.assert_array_equal(DEQUANTIZE(q), FQ(x, bits=bits, axis=axis, symmetric=symmetric))


# --- QArray and int4 ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 10, 33])
@pytest.mark.parametrize("signed", [True, False])
def test_int4_pack_roundtrip(n, signed):
    rng = np.random.default_rng(n)
    v = rng.integers(-8, 8, n) if signed else rng.integers(0, 16, n)
    packed = quant.pack_int4(v)
    assert packed.dtype == jnp.uint8 and packed.shape == ((n + 1) // 2,)
    np.testing.assert_array_equal(quant.unpack_int4(packed, (n,), signed=signed), v)


def test_int4_pack_known_bytes():
    np.testing.assert_array_equal(quant.pack_int4(np.array([1, 2, -1])), [0x21, 0x0F])


def test_int4_pack_numpy_in_numpy_out_jax_in_jax_out():
    v = np.array([[1, -8, 7], [0, -1, 3]], np.int8)
    packed = quant.pack_int4(v)
    assert type(packed) is np.ndarray and packed.tolist() == [0x81, 0x07, 0x3F]
    unpacked = quant.unpack_int4(packed, (2, 3), signed=True)
    assert type(unpacked) is np.ndarray and unpacked.dtype == np.int8
    np.testing.assert_array_equal(unpacked, v)
    for fn in (quant.pack_int4, jax.jit(quant.pack_int4)):
        packed_jax = fn(jnp.asarray(v))
        assert isinstance(packed_jax, jax.Array)
        np.testing.assert_array_equal(packed_jax, packed)
    unpack = jax.jit(lambda p: quant.unpack_int4(p, (2, 3), signed=True))
    np.testing.assert_array_equal(unpack(jnp.asarray(packed)), v)


@pytest.mark.parametrize(
    ("bits", "symmetric", "dtype", "nbytes"),
    [
        (8, True, np.int8, 35),
        (8, False, np.uint8, 35),
        (4, True, np.uint8, 18),
        (3, False, np.uint8, 18),
        (16, True, np.int16, 70),
    ],
)
def test_qarray_storage(bits, symmetric, dtype, nbytes):
    x = jax.random.normal(KEY, (5, 7))
    q = QUANTIZE(x, bits=bits, axis=-1, symmetric=symmetric)
    assert q.values.dtype == dtype and q.values.size * q.values.dtype.itemsize == nbytes
    assert q.scale.shape == (1, 7) and q.shape == (5, 7) and q.axis == (1,)
    leaves = jax.tree.leaves(q)
    assert len(leaves) == 3  # metadata is static
    np.testing.assert_array_equal(DEQUANTIZE(q), FQ(x, bits=bits, axis=-1, symmetric=symmetric))


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 1, 17, 32, 2.5, True, "8"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=r"bits=.*Accepted: integers 2-16"):
        quant.fake_quant(jnp.ones(3), bits=bits)
    with pytest.raises(ValueError, match="Accepted: integers 2-16"):
        quant.quantize(jnp.ones(3), bits=bits)
    with pytest.raises(ValueError, match=r"^quant\.bits=.*Accepted: integers 2-16"):
        quant.check_bits(bits, what="quant.bits")


def test_check_bits_returns_an_int():
    assert quant.check_bits(np.int64(4)) == 4 and type(quant.check_bits(np.int64(4))) is int


def test_layer_paths_are_the_owners_of_kernels():
    params = {"conv1": {"kernel": 0, "bias": 0}, "block": {"dense": {"kernel": 0}}, "scale": 0}
    assert quant.layer_paths(params) == ["block/dense", "conv1"]


@pytest.mark.parametrize("axis", [2, -3, (0, 0)])
def test_bad_axis(axis):
    with pytest.raises(ValueError, match="axis="):
        quant.fake_quant(jnp.ones((2, 3)), bits=8, axis=axis)


def test_bad_bounds_shape():
    with pytest.raises(ValueError, match="bounds entry of shape"):
        quant.fake_quant(jnp.ones((2, 3)), bits=8, axis=-1, bounds=(jnp.zeros(2), jnp.ones(2)))


# --- params and rules ---------------------------------------------------------------------

PARAMS = {
    "conv1": {"kernel": jax.random.normal(KEY, (3, 1, 4)), "bias": jnp.ones(4)},
    "head": {"kernel": jax.random.normal(jax.random.key(1), (8, 3)), "bias": jnp.zeros(3)},
}


def test_quantize_params_by_rules():
    rules = [
        ("head/kernel", quant.QuantSpec(bits=4, axis=None)),
        (".*kernel", 8),
        (".*", None),
    ]
    q = jax.jit(lambda p: quant.quantize_params(p, rules))(PARAMS)
    assert q["conv1"]["kernel"].bits == 8 and q["conv1"]["kernel"].axis == (2,)
    assert q["head"]["kernel"].bits == 4 and q["head"]["kernel"].axis is None
    np.testing.assert_array_equal(q["conv1"]["bias"], PARAMS["conv1"]["bias"])
    deq = jax.jit(quant.dequantize_params)(q)
    fq = jax.jit(lambda p: quant.fake_quant_params(p, rules))(PARAMS)
    jax.tree.map(np.testing.assert_array_equal, deq, fq)
    # int8 + packed int4 + scales + fp32 biases
    assert quant.quantized_bytes(q) == 12 + 4 * 4 + 12 + 4 + 4 * 4 + 3 * 4


def test_rules_errors_name_paths():
    with pytest.raises(ValueError, match="rules matching no parameter"):
        quant.quantize_params(PARAMS, [("nope/kernel", 8), (".*", None)])
    with pytest.raises(ValueError, match="covered by no rule"):
        quant.quantize_params(PARAMS, [(".*kernel", 8)])
    with pytest.raises(ValueError, match=r"bits for 'head/kernel'"):
        quant.quantize_params(PARAMS, [("head/kernel", 40), (".*", None)])
    with pytest.raises(ValueError, match="leaf 'conv1/bias'"):
        quant.quantize_params(PARAMS, [(".*", quant.QuantSpec(bits=8, axis=1))])


def test_pruned_zeros_survive_quantization():
    mask = jax.random.bernoulli(KEY, 0.2, PARAMS["head"]["kernel"].shape)
    params = {**PARAMS, "head": {**PARAMS["head"], "kernel": PARAMS["head"]["kernel"] * mask}}
    for bits in (4, 8):
        deq = quant.dequantize_params(quant.quantize_params(params, bits))
        assert np.all(np.asarray(deq["head"]["kernel"])[~np.asarray(mask)] == 0)


# --- tiny models --------------------------------------------------------------------------


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train
        h = nn.relu(nn.Dense(6, name="a")(x))
        return nn.Dense(3, name="head")(h)


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train
        h = nn.relu(nn.Conv(8, (5,), strides=(2,), padding=((1, 1),), name="conv1")(x[..., None]))
        h = nn.relu(nn.Conv(8, (3,), strides=(2,), padding="SAME", name="conv2")(h))
        return nn.Dense(4, name="head")(h.reshape(h.shape[0], -1))


def test_calibrate_observers_exact():
    model = Tiny()
    x1 = jnp.array([[-1.0, 2.0, 0.5, 0.0]])
    x2 = jnp.array([[-3.0, 1.0, 0.0, 0.0]])
    v = model.init(KEY, x1)
    got = quant.calibrate(model, v, [x1, x2])
    assert got["a"] == (-3.0, 2.0) and set(got) == {"a", "head"}
    got = quant.calibrate(model, v, iter([x1, x2]), observer="moving_average", momentum=0.5)
    assert got["a"] == (-2.0, 1.5)
    got = quant.calibrate(model, v, [x1, x2], observer="percentile", percentile=100.0)
    assert got["a"] == (-2.0, 1.5)  # mean over batches of each batch's min / max
    assert got["head"][0] >= 0.0  # the head sees ReLU outputs


def test_calibrate_errors():
    model = Tiny()
    v = model.init(KEY, jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="batches is empty"):
        quant.calibrate(model, v, [])
    with pytest.raises(ValueError, match="observer='mean' is unknown"):
        quant.calibrate(model, v, [jnp.ones((1, 4))], observer="mean")
    with pytest.raises(ValueError, match="percentile=40"):
        quant.calibrate(model, v, [jnp.ones((1, 4))], observer="percentile", percentile=40)


def test_qat_forward_uses_per_layer_bits():
    model = Tiny()
    x = jax.random.normal(KEY, (16, 4))
    v = model.init(KEY, x)
    p = v["params"]
    wrules = [("a/kernel", 8), ("head/kernel", 2), (".*", None)]
    arules = [("a", 8), ("head", 3)]
    got = jax.jit(quant.fake_quant_apply_fn(model, weight_bits=wrules, act_bits=arules))(v, x)

    def fq(t, bits, axis=None, symmetric=False):
        return np_fake_quant(t, bits, axis, symmetric)

    h = fq(x, 8) @ fq(p["a"]["kernel"], 8, -1, True) + p["a"]["bias"]
    want = fq(np.maximum(h, 0), 3) @ fq(p["head"]["kernel"], 2, -1, True) + p["head"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(np.unique(fq(p["head"]["kernel"], 2, -1, True)[:, 0])) <= 3


def test_qat_errors():
    model = Tiny()
    v = model.init(KEY, jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="activation bits rules: rules matching no parameter"):
        quant.qat_apply(model, v, jnp.ones((1, 4)), act_bits=[("zz", 8), (".*", 8)])
    with pytest.raises(ValueError, match="act_ranges: no entry for layer 'head'"):
        quant.qat_apply(model, v, jnp.ones((1, 4)), act_ranges={"a": (0.0, 1.0)})


def _xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_qat_trains_tiny_cnn():
    model = TinyCNN()
    x = jax.random.normal(KEY, (64, 24))
    y = (x[:, :12].sum(-1) > 0).astype(jnp.int32) + 2 * (x[:, 12:].sum(-1) > 0)
    params = model.init(jax.random.key(1), x[:1])["params"]
    apply_fn = quant.fake_quant_apply_fn(
        model,
        weight_bits=[("conv1/kernel|head/kernel", 8), (".*kernel", 4), (".*", None)],
        act_bits=[("conv1|head", 8), (".*", 4)],
    )
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, g = jax.value_and_grad(lambda p: _xent(apply_fn({"params": p}, x, train=True), y))(
            params
        )
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    # conv2 trained through 4-bit fake quant: its weights, so quantized, take <= 15 levels.
    q = quant.quantize_params(params, [("conv2/kernel", 4), (".*", None)])
    assert len(np.unique(np.asarray(q["conv2"]["kernel"].int_values()))) <= 15


# --- int8 inference -----------------------------------------------------------------------

LAYERS = [
    nn.Dense(16),
    nn.Conv(16, (3,), strides=2, padding=((1, 1),)),
    nn.Conv(8, (3,), padding="CAUSAL", kernel_dilation=2),
    nn.Conv(8, (3, 3), padding="CIRCULAR"),
    nn.Conv(8, (3, 3), padding="SAME", strides=(2, 1), feature_group_count=2),
    nn.Conv(8, (2, 2), padding="VALID", use_bias=False),
    nn.Conv(8, (3,), padding=((2, 1),), input_dilation=2),  # lax.conv fallback
]


CASES = [(layer, False) for layer in LAYERS] + [(LAYERS[0], True), (LAYERS[4], True)]


@pytest.mark.parametrize(("layer", "act_symmetric"), CASES)
def test_int8_layer_matches_fake_quant(layer, act_symmetric):
    spatial = (10, 9) if isinstance(layer, nn.Conv) and len(layer.kernel_size) == 2 else (12,)
    x = jax.random.normal(KEY, (32, *spatial, 4)) + 0.7
    v = layer.init(jax.random.key(1), x)
    qp = quant.quantize_params(v["params"], 8)
    # Calibrated ranges for one case; per-batch (dynamic) ranges for the others.
    ranges = quant.calibrate(layer, v, [x]) if layer is LAYERS[1] else None
    kw = {"act_ranges": ranges, "act_symmetric": act_symmetric}
    want = jax.jit(quant.fake_quant_apply_fn(layer, weight_bits=8, **kw))(v, x)
    got = jax.jit(quant.int8_apply_fn(layer, **kw))({"params": qp}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * float(jnp.abs(want).max()))


def test_int8_uses_integer_dot():
    model = TinyCNN()
    x = jax.random.normal(KEY, (4, 24))
    v = model.init(KEY, x)
    qp = quant.quantize_params(v["params"], 8)
    hlo = jax.jit(quant.int8_apply_fn(model)).lower({"params": qp}, x).as_text()
    # Both convs (as patches @ kernel) and the head: int8 x int8 -> int32.
    int_dots = re.findall(
        r"dot_general.*\(tensor<[0-9x]+xi8>, tensor<[0-9x]+xi8>\) -> tensor<[0-9x]+xi32>", hlo
    )
    assert len(int_dots) == 3, hlo
    assert "xf32>) -> tensor" not in "".join(re.findall(r"dot_general.*", hlo))


def test_int8_cnn_model_agrees_with_fake_quant():
    from jaxopt_ft import models

    model = models.get("cnn", channels=(64, 64, 64))
    x = jax.random.normal(KEY, (400, 40))
    v = model.init(jax.random.key(1), x[:1])
    rules = [("conv1/kernel", 8), (".*kernel", 8), (".*", None)]
    ranges = quant.calibrate(model, v, [x[:200], x[200:]], observer="percentile")
    fq = jax.jit(quant.fake_quant_apply_fn(model, weight_bits=rules, act_ranges=ranges))(v, x)
    i8 = jax.jit(quant.int8_apply_fn(model, act_ranges=ranges))(
        {"params": quant.quantize_params(v["params"], rules)}, x
    )
    agree = float(jnp.mean(fq.argmax(-1) == i8.argmax(-1)))
    assert agree >= 0.999, agree
    np.testing.assert_allclose(i8, fq, atol=0.02 * float(jnp.abs(fq).max()))


def test_int8_partial_layers_and_errors():
    model = Tiny()
    x = jax.random.normal(KEY, (8, 4))
    v = model.init(KEY, x)
    # head kernel float, its input float: the head runs as in the fake-quant model.
    rules = [("a/kernel", 8), (".*", None)]
    qp = quant.quantize_params(v["params"], rules)
    acts = [("a", 8), ("head", None)]
    got = quant.int8_apply(model, {"params": qp}, x, act_bits=acts)
    want = quant.qat_apply(model, v, x, weight_bits=rules, act_bits=acts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    bad = quant.quantize_params(
        v["params"], [(".*kernel", quant.QuantSpec(bits=8, symmetric=False)), (".*", None)]
    )
    with pytest.raises(ValueError, match="symmetric=False.*Accepted: bits <= 8, symmetric"):
        quant.int8_apply(model, {"params": bad}, x)
    with pytest.raises(ValueError, match="act bits 12"):
        quant.int8_apply(model, {"params": qp}, x, act_bits=12)


def test_qat_on_cnn_model_passes_call_kwargs():
    from jaxopt_ft import models

    model = models.get("cnn")
    x = jax.random.normal(KEY, (8, 40))
    v = model.init(KEY, x[:1])
    apply_fn = jax.jit(
        quant.fake_quant_apply_fn(
            model,
            weight_bits=[("conv1/kernel|head/kernel", 8), (".*kernel", 4), (".*", None)],
            act_bits=[("conv1|head", 8), (".*", 4)],
        ),
        static_argnames=("train", "features_only"),
    )
    assert apply_fn(v, x, train=True).shape == (8, 10)
    feats = apply_fn(v, x, features_only=True)
    assert feats.shape == model.apply(v, x, features_only=True).shape
