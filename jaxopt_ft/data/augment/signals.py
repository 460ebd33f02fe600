"""1-D signal ops on ``x: (B, L)`` or ``(B, L, C)`` (MNIST-1D): shift, stretch, scale, noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_ft.data.augment._core import (
    Augment,
    applied,
    check_p,
    check_range,
    check_rank,
    select,
)


def _time_gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx if x.ndim == 2 else idx[..., None], axis=1)


def shift(*, max_shift: int = 5, p: float = 1.0) -> Augment:
    """Circular shift along time by an integer uniform in ±``max_shift``."""
    check_range("shift", "max_shift", max_shift, 1, 10**6, integer=True)
    p = check_p("shift", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("shift", x, (2, 3), "signals (B, L) or (B, L, C)")
        b, n = x.shape[:2]
        k_s, k_p = jax.random.split(key)
        s = jax.random.randint(k_s, (b, 1), -max_shift, max_shift + 1)
        s = jnp.where(applied(k_p, p, b)[:, None], s, 0)
        return {**batch, "x": _time_gather(x, (jnp.arange(n)[None, :] - s) % n)}

    return fn


def stretch(*, max_stretch: float = 0.1, p: float = 1.0) -> Augment:
    """Resamples time about the centre by a factor uniform in 1 ± ``max_stretch`` (linear,
    edge values extended)."""
    check_range("stretch", "max_stretch", max_stretch, 0.0, 0.9)
    p = check_p("stretch", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("stretch", x, (2, 3), "signals (B, L) or (B, L, C)")
        b, n = x.shape[:2]
        k_f, k_p = jax.random.split(key)
        f = jax.random.uniform(k_f, (b, 1), minval=1 - max_stretch, maxval=1 + max_stretch)
        f = jnp.where(applied(k_p, p, b)[:, None], f, 1.0)
        c = (n - 1) / 2.0
        pos = jnp.clip(c + (jnp.arange(n, dtype=jnp.float32)[None, :] - c) / f, 0, n - 1)
        i0 = jnp.clip(jnp.floor(pos), 0, n - 2).astype(jnp.int32)
        wt = pos - i0
        wt = wt if x.ndim == 2 else wt[..., None]
        out = _time_gather(x, i0) * (1 - wt) + _time_gather(x, i0 + 1) * wt
        return {**batch, "x": out.astype(x.dtype)}

    return fn


def scale(*, max_scale: float = 0.1, p: float = 1.0) -> Augment:
    """Multiplies the amplitude by a factor uniform in 1 ± ``max_scale``."""
    check_range("scale", "max_scale", max_scale, 0.0, 0.99)
    p = check_p("scale", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("scale", x, (2, 3), "signals (B, L) or (B, L, C)")
        b = x.shape[0]
        k_a, k_p = jax.random.split(key)
        a = jax.random.uniform(k_a, (b,), minval=1 - max_scale, maxval=1 + max_scale)
        a = jnp.where(applied(k_p, p, b), a, 1.0).reshape((b,) + (1,) * (x.ndim - 1))
        return {**batch, "x": (x * a).astype(x.dtype)}

    return fn


def noise(*, std: float = 0.1, p: float = 1.0) -> Augment:
    """Adds Gaussian noise of standard deviation ``std`` (in the data's units)."""
    check_range("noise", "std", std, 0.0, 100.0)
    p = check_p("noise", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("noise", x, (2, 3), "signals (B, L) or (B, L, C)")
        k_n, k_p = jax.random.split(key)
        new = x + std * jax.random.normal(k_n, x.shape, x.dtype)
        return {**batch, "x": select(applied(k_p, p, x.shape[0]), new, x)}

    return fn
