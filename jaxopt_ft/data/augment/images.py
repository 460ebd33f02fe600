"""Image ops on ``x: (B, H, W, C)``: crop, flip, rotate, brightness/contrast, cutout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxopt_ft.data.augment._core import (
    Augment,
    applied,
    check_p,
    check_range,
    check_rank,
    gather,
    select,
)


def crop(*, pad: int = 2, p: float = 1.0) -> Augment:
    """Random crop of the image zero-padded by ``pad``: a translation by up to ±``pad`` pixels."""
    check_range("crop", "pad", pad, 1, 64, integer=True)
    p = check_p("crop", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("crop", x, (4,), "images (B, H, W, C)")
        b, h, w, _ = x.shape
        k_off, k_p = jax.random.split(key)
        off = jax.random.randint(k_off, (b, 2, 1, 1), -pad, pad + 1)
        off = jnp.where(applied(k_p, p, b)[:, None, None, None], off, 0)
        rows = jnp.broadcast_to(jnp.arange(h)[None, :, None] + off[:, 0], (b, h, w))
        cols = jnp.broadcast_to(jnp.arange(w)[None, None, :] + off[:, 1], (b, h, w))
        return {**batch, "x": gather(x, rows, cols)}

    return fn


def flip(*, p: float = 0.5) -> Augment:
    """Horizontal (left-right) flip. Wrong for digits and text: it changes their meaning."""
    p = check_p("flip", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("flip", x, (4,), "images (B, H, W, C)")
        return {**batch, "x": select(applied(key, p, x.shape[0]), x[:, :, ::-1], x)}

    return fn


def rotate(*, degrees: float = 10.0, p: float = 1.0) -> Augment:
    """Rotation about the centre by an angle uniform in ±``degrees`` (bilinear, zero fill)."""
    check_range("rotate", "degrees", degrees, 0.0, 180.0)
    p = check_p("rotate", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("rotate", x, (4,), "images (B, H, W, C)")
        b, h, w, _ = x.shape
        k_a, k_p = jax.random.split(key)
        angle = jax.random.uniform(k_a, (b,), minval=-degrees, maxval=degrees) * (math.pi / 180)
        angle = jnp.where(applied(k_p, p, b), angle, 0.0)[:, None, None]
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        i = jnp.arange(h, dtype=jnp.float32)[None, :, None] - cy
        j = jnp.arange(w, dtype=jnp.float32)[None, None, :] - cx
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        si, sj = cos * i - sin * j + cy, sin * i + cos * j + cx  # source of each output pixel
        i0, j0 = jnp.floor(si), jnp.floor(sj)
        di, dj = (si - i0)[..., None], (sj - j0)[..., None]
        i0, j0 = i0.astype(jnp.int32), j0.astype(jnp.int32)
        out = (
            gather(x, i0, j0) * (1 - di) * (1 - dj)
            + gather(x, i0 + 1, j0) * di * (1 - dj)
            + gather(x, i0, j0 + 1) * (1 - di) * dj
            + gather(x, i0 + 1, j0 + 1) * di * dj
        )
        return {**batch, "x": out.astype(x.dtype)}

    return fn


def brightness_contrast(
    *, brightness: float = 0.2, contrast: float = 0.2, p: float = 1.0
) -> Augment:
    """``x -> (x - mean) * c + mean + b``: contrast and brightness jitter.

    ``c`` is uniform in 1 ± ``contrast``, ``b`` in ±``brightness``, ``mean`` is the example's
    mean; ``b`` is in the data's units (standard deviations after
    standardisation).
    """
    check_range("brightness_contrast", "brightness", brightness, 0.0, 10.0)
    check_range("brightness_contrast", "contrast", contrast, 0.0, 0.99)
    p = check_p("brightness_contrast", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("brightness_contrast", x, (4,), "images (B, H, W, C)")
        b = x.shape[0]
        k_b, k_c, k_p = jax.random.split(key, 3)
        shape = (b, 1, 1, 1)
        add = jax.random.uniform(k_b, shape, minval=-brightness, maxval=brightness)
        mul = jax.random.uniform(k_c, shape, minval=1 - contrast, maxval=1 + contrast)
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        new = ((x - mean) * mul + mean + add).astype(x.dtype)
        return {**batch, "x": select(applied(k_p, p, b), new, x)}

    return fn


def cutout(*, size: int = 4, p: float = 1.0) -> Augment:
    """Zeroes a ``size x size`` square centred anywhere in the image (it may be clipped)."""
    check_range("cutout", "size", size, 1, 1024, integer=True)
    p = check_p("cutout", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("cutout", x, (4,), "images (B, H, W, C)")
        b, h, w, _ = x.shape
        k_y, k_x, k_p = jax.random.split(key, 3)
        top = jax.random.randint(k_y, (b, 1, 1), 0, h) - size // 2
        left = jax.random.randint(k_x, (b, 1, 1), 0, w) - size // 2
        rows = jnp.arange(h)[None, :, None]
        cols = jnp.arange(w)[None, None, :]
        box = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        box = box & applied(k_p, p, b)[:, None, None]
        return {**batch, "x": jnp.where(box[..., None], jnp.zeros((), x.dtype), x)}

    return fn
