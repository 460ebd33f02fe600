"""Augmentation ops: shape, dtype, value range, determinism per key, statistical effect."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_ft.data import augment as A

KEY = jax.random.PRNGKey(0)
RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.normal(size=(256, 8, 8, 1)), jnp.float32)
SIGNALS = jnp.asarray(RNG.normal(size=(256, 40)), jnp.float32)
LABELS = jnp.asarray(RNG.integers(0, 10, size=256), jnp.int32)

IMAGE_CASES = [
    ("crop", dict(pad=1)),
    ("flip", dict(p=0.5)),
    ("rotate", dict(degrees=10)),
    ("brightness_contrast", dict(brightness=0.2, contrast=0.2)),
    ("cutout", dict(size=3)),
    ("cutmix", dict(num_classes=10)),
    ("mixup", dict(num_classes=10)),
]
SIGNAL_CASES = [
    ("shift", dict(max_shift=5)),
    ("stretch", dict(max_stretch=0.2)),
    ("scale", dict(max_scale=0.2)),
    ("noise", dict(std=0.1)),
]


# Ops with gathers, permutations or per-example parameters of their own kind (compiling all of
# them under vmap too would double this file's run time).
VMAP_CHECKED = ("crop", "rotate", "cutout", "mixup", "shift", "stretch")


def _run(op, batch):
    return jax.jit(op)(KEY, batch)


def _batch(x):
    return {"x": x, "label": LABELS[: len(x)]}


def _cases():
    for name, kw in IMAGE_CASES:
        yield pytest.param(name, kw, IMAGES, id=f"image-{name}")
    for name, kw in SIGNAL_CASES:
        yield pytest.param(name, kw, SIGNALS, id=f"signal-{name}")


@pytest.mark.parametrize("name, kw, x", list(_cases()))
def test_shape_dtype_range_determinism_and_vmap(name, kw, x):
    x = x[:16]
    op = jax.jit(A.OPS[name](**kw))
    out = op(KEY, _batch(x))
    assert out["x"].shape == x.shape and out["x"].dtype == x.dtype
    if name in ("mixup", "cutmix"):
        assert out["label"].shape == (16, 10) and out["label"].dtype == jnp.float32
        np.testing.assert_allclose(out["label"].sum(-1), 1.0, rtol=1e-6)
    else:
        np.testing.assert_array_equal(out["label"], LABELS[:16])
    np.testing.assert_array_equal(out["x"], op(KEY, _batch(x))["x"])
    assert not np.array_equal(out["x"], op(jax.random.PRNGKey(1), _batch(x))["x"])
    # Value range: resampling ops stay within the data and the zero fill; jitter ops within
    # their bounds.
    o, xn = np.asarray(out["x"]), np.asarray(x)
    if name == "brightness_contrast":
        m = xn.mean(axis=(1, 2, 3), keepdims=True)
        assert np.all(np.abs(o - m) <= 1.2 * np.abs(xn - m) + 0.2 + 1e-5)
    elif name == "scale":
        assert np.all(np.abs(o) <= 1.2 * np.abs(xn) + 1e-6)
    elif name == "noise":
        assert 0.08 < float(np.std(o - xn)) < 0.12
    else:
        assert o.min() >= min(xn.min(), 0.0) - 1e-5 and o.max() <= max(xn.max(), 0.0) + 1e-5
    if name not in VMAP_CHECKED:
        return
    # vmap over (key, batch) pairs gives what a loop gives.
    keys = jax.random.split(KEY, 3)
    xs = jnp.stack([x, x[::-1], -x])
    labels = jnp.stack([LABELS[:16]] * 3)
    stacked = jax.vmap(op)(keys, {"x": xs, "label": labels})
    for i in range(3):
        one = op(keys[i], {"x": xs[i], "label": labels[i]})
        np.testing.assert_allclose(stacked["x"][i], one["x"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kw, x", list(_cases()))
def test_p_zero_is_identity(name, kw, x):
    out = jax.jit(A.OPS[name](**{**kw, "p": 0.0}))(KEY, _batch(x[:16]))
    np.testing.assert_array_equal(out["x"], x[:16])


def test_flip_rate_matches_p():
    x = jnp.asarray(RNG.normal(size=(4000, 4, 5, 1)), jnp.float32)
    out = _run(A.flip(p=0.3), {"x": x, "label": jnp.zeros(4000, jnp.int32)})["x"]
    flipped = np.all(np.asarray(out) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert abs(flipped.mean() - 0.3) < 0.03  # 4.5 binomial standard deviations


def _offsets(x, out, max_off, axes):
    """The translation of each example, found by matching against every candidate shift."""
    found = []
    for xi, oi in zip(np.asarray(x), np.asarray(out), strict=True):
        hits = []
        for dy in range(-max_off, max_off + 1):
            for dx in range(-max_off, max_off + 1) if axes == 2 else [0]:
                if axes == 2:
                    ref = np.zeros_like(xi)
                    h, w = xi.shape[:2]
                    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
                    ref[ys, xs] = xi[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
                else:
                    ref = np.roll(xi, dy)
                if np.array_equal(ref, oi):
                    hits.append((dy, dx))
        assert len(hits) == 1, hits
        found.append(hits[0])
    return found


def test_crop_offsets_are_uniform():
    x = jnp.asarray(RNG.normal(size=(900, 6, 6, 1)), jnp.float32)
    out = _run(A.crop(pad=1), {"x": x, "label": jnp.zeros(900, jnp.int32)})["x"]
    counts = {}
    for off in _offsets(x, out, 1, axes=2):
        counts[off] = counts.get(off, 0) + 1
    assert len(counts) == 9  # every offset in [-1, 1]^2 occurs ...
    assert all(abs(c - 100) < 35 for c in counts.values())  # ... about equally often


def test_shift_is_circular_and_uniform():
    x = jnp.asarray(RNG.normal(size=(700, 12)), jnp.float32)
    out = _run(A.shift(max_shift=3), {"x": x, "label": jnp.zeros(700, jnp.int32)})["x"]
    np.testing.assert_array_equal(np.sort(out, axis=1), np.sort(x, axis=1))  # a permutation
    counts = np.bincount([dy + 3 for dy, _ in _offsets(x, out, 3, axes=1)], minlength=7)
    assert np.all(np.abs(counts - 100) < 35), counts


def test_rotate_turns_a_line_by_at_most_degrees():
    n, size = 256, 33
    img = np.zeros((size, size, 1), np.float32)
    img[size // 2, 4:-4] = 1.0  # a horizontal bar through the centre
    x = jnp.broadcast_to(jnp.asarray(img), (n, size, size, 1))
    out = np.asarray(_run(A.rotate(degrees=20), {"x": x, "label": jnp.zeros(n, jnp.int32)})["x"])
    yy, xx = np.mgrid[:size, :size] - size // 2
    w = out[..., 0]
    cov_xy = (w * xx * yy).sum((1, 2))
    cov_xx, cov_yy = (w * xx * xx).sum((1, 2)), (w * yy * yy).sum((1, 2))
    angle = np.degrees(0.5 * np.arctan2(2 * cov_xy, cov_xx - cov_yy))
    assert np.all(np.abs(angle) <= 20.5)
    assert angle.min() < -15 and angle.max() > 15 and abs(angle.mean()) < 3


def test_brightness_contrast_statistics():
    out = np.asarray(_run(A.brightness_contrast(brightness=0.5, contrast=0.3), _batch(IMAGES))["x"])
    xn = np.asarray(IMAGES)
    shift = out.mean(axis=(1, 2, 3)) - xn.mean(axis=(1, 2, 3))
    ratio = out.std(axis=(1, 2, 3)) / xn.std(axis=(1, 2, 3))
    assert np.all(np.abs(shift) <= 0.5 + 1e-5) and shift.min() < -0.4 and shift.max() > 0.4
    assert np.all((ratio > 0.7 - 1e-5) & (ratio < 1.3 + 1e-5)) and ratio.min() < 0.75


def test_cutout_zeroes_one_square_with_probability_p():
    x = jnp.ones((2000, 8, 8, 1))
    out = np.asarray(_run(A.cutout(size=3, p=0.4), {"x": x, "label": LABELS[:1]})["x"])
    zeros = (out == 0).sum(axis=(1, 2, 3))
    assert np.all(zeros <= 9)
    assert abs((zeros > 0).mean() - 0.4) < 0.05
    assert np.all(out[zeros > 0].min(axis=(1, 2, 3)) == 0)
    assert (zeros == 9).mean() > 0.2  # fully inside the image often


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_labels_follow_the_pixels(name):
    """With images whose pixels are the one-hot label, the mixed image's mean is its label."""
    n = 400
    labels = jnp.asarray(RNG.integers(0, 10, size=n), jnp.int32)
    x = jnp.broadcast_to(jax.nn.one_hot(labels, 10)[:, None, None, :], (n, 6, 6, 10))
    out = _run(A.OPS[name](num_classes=10, alpha=1.0), {"x": x, "label": labels})
    np.testing.assert_allclose(out["x"].mean(axis=(1, 2)), out["label"], atol=1e-6)
    own = np.asarray(out["label"])[np.arange(n), np.asarray(labels)]
    assert own.mean() < 0.9 and own.min() < 0.5  # Beta(1, 1) mixing is strong
    if name == "mixup":  # soft labels mix too (the same helper serves cutmix)
        again = _run(A.OPS[name](num_classes=10, alpha=1.0), out)
        np.testing.assert_allclose(again["x"].mean(axis=(1, 2)), again["label"], atol=1e-6)


def test_stretch_resamples_a_ramp():
    ramp = jnp.broadcast_to(jnp.arange(41, dtype=jnp.float32), (300, 41))
    out = np.asarray(_run(A.stretch(max_stretch=0.2), {"x": ramp, "label": LABELS[:1]})["x"])
    np.testing.assert_allclose(out[:, 20], 20.0, atol=1e-4)  # the centre stays
    slope = (out[:, 25] - out[:, 15]) / 10
    assert np.all((slope > 1 / 1.2 - 1e-4) & (slope < 1 / 0.8 + 1e-4))
    assert slope.min() < 0.88 and slope.max() > 1.15


def test_scale_multiplies_by_one_factor_per_example():
    out = np.asarray(_run(A.scale(max_scale=0.2), _batch(SIGNALS))["x"])
    factor = out / np.asarray(SIGNALS)
    np.testing.assert_allclose(factor, np.broadcast_to(factor[:, :1], factor.shape), rtol=1e-5)
    assert factor.min() >= 0.8 - 1e-6 and factor.max() <= 1.2 + 1e-6
    assert factor.min() < 0.82 and factor.max() > 1.18


def test_compose_build_and_parse():
    spec = "crop(pad=1), rotate(degrees=10, p=0.5)"
    assert A.parse(spec) == [("crop", {"pad": 1}), ("rotate", {"degrees": 10, "p": 0.5})]
    assert A.parse([{"name": "flip", "p": 0.2}, "noise"]) == [("flip", {"p": 0.2}), ("noise", {})]
    assert A.build("", input_shape=(8, 8, 1), num_classes=10) is None
    aug = A.build(spec, input_shape=(8, 8, 1), num_classes=10)
    manual = A.compose(A.crop(pad=1), A.rotate(degrees=10, p=0.5))
    batch = _batch(IMAGES[:16])
    np.testing.assert_array_equal(_run(aug, batch)["x"], _run(manual, batch)["x"])


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        ("blur", (8, 8, 1), "Unknown augmentation 'blur'; accepted: crop, flip"),
        ("flip(p=1.5)", (8, 8, 1), "p is a probability and must be in \\[0, 1\\], got 1.5"),
        ("crop(p=-0.1)", (8, 8, 1), "must be in \\[0, 1\\], got -0.1"),
        ("crop(size=2)", (8, 8, 1), "no argument size; accepted: pad, p"),
        ("crop(pad)", (8, 8, 1), "cannot read argument 'pad'"),
        ("crop(pad=1) flip", (8, 8, 1), "Cannot read augment spec"),
        ("shift", (8, 8, 1), "needs 1-D signals"),
        ("rotate", (40,), "needs images"),
        ([{"p": 0.5}], (40,), "has no 'name'"),
        ("crop(pad=0)", (8, 8, 1), "pad must be an integer in"),
    ],
)
def test_bad_specs(spec, shape, match):
    with pytest.raises(ValueError, match=match):
        A.build(spec, input_shape=shape, num_classes=10)
