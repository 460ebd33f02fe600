"""Shared pieces of the augmentation ops: types, argument checks, per-example selection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Batch = dict[str, Any]
Augment = Callable[[jax.Array, Batch], Batch]


def check_p(op: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(
            f"augment op {op!r}: p is a probability and must be in [0, 1], got {p!r}; "
            f"e.g. {op}(p=0.5)."
        )
    return float(p)


def check_range(op: str, name: str, value: Any, low: float, high: float, *, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise ValueError(
            f"augment op {op!r}: {name} must be {what} in [{low}, {high}], got {value!r}."
        )
    return value


def check_rank(op: str, x: jax.Array, ranks: tuple[int, ...], what: str) -> None:
    if x.ndim not in ranks:
        raise ValueError(f"{op} works on {what}, got x of shape {x.shape}; drop it for this data.")


def applied(key: jax.Array, p: float, n: int) -> jax.Array:
    return jax.random.bernoulli(key, p, (n,))


def select(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    return jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - 1)), new, old)


def soft_labels(label: jax.Array, num_classes: int) -> jax.Array:
    if label.ndim == 2:
        return label.astype(jnp.float32)
    return jax.nn.one_hot(label, num_classes, dtype=jnp.float32)


def gather(x: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``x[b, rows[b, i, j], cols[b, i, j]]`` with 0 outside the image; x is (B, H, W, C)."""
    _, h, w, _ = x.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    r, c = jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)
    out = jax.vmap(lambda img, ri, ci: img[ri, ci])(x, r, c)
    return jnp.where(inside[..., None], out, jnp.zeros((), x.dtype))


def compose(*ops: Augment) -> Augment:
    """Applies ``ops`` in order, each with its own key split from the one given."""

    def fn(key, batch):
        for k, op in zip(jax.random.split(key, len(ops)), ops, strict=True):
            batch = op(k, batch)
        return batch

    return fn
