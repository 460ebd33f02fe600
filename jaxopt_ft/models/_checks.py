"""Field validation and input-shape helpers shared by the model families."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def check_positive_int(model: str, field: str, value: object) -> None:
    """Raises ValueError unless ``value`` is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{model}.{field}={value!r} is invalid: expected an integer >= 1. "
            f"Fix: pass {field}=<positive int>."
        )


def check_widths(model: str, field: str, value: object, *, allow_empty: bool = False) -> None:
    """Raises ValueError unless ``value`` is a tuple/list of ints >= 1."""
    ok = isinstance(value, tuple | list) and (allow_empty or len(value) > 0)
    ok = ok and all(not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in value)
    if not ok:
        need = "a tuple of" if allow_empty else "a non-empty tuple of"
        raise ValueError(
            f"{model}.{field}={value!r} is invalid: expected {need} integers >= 1, "
            f"e.g. {field}=(32, 32). Fix: pass the per-layer widths as a tuple."
        )


def check_width_mult(model: str, value: object) -> None:
    """Raises ValueError unless ``value`` is a finite number > 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{model}.width_mult={value!r} is invalid: expected a finite number > 0 "
            "(1.0 keeps the listed widths). Fix: pass e.g. width_mult=2.0."
        )


def scale_widths(widths: Sequence[int], width_mult: float) -> tuple[int, ...]:
    """Multiplies each width by ``width_mult``, rounding half up, never below 1."""
    return tuple(max(1, math.floor(w * width_mult + 0.5)) for w in widths)


def as_sequence(model: str, x: jax.Array) -> jax.Array:
    """Returns ``x`` as (B, L, C): a (B, L) signal gets a channel axis of size 1."""
    x = jnp.asarray(x)
    if x.ndim == 2:
        return x[..., None]
    if x.ndim == 3:
        return x
    raise ValueError(
        f"{model} expects a 1-D signal batch of shape (B, L) or (B, L, C); got shape "
        f"{x.shape}. Fix: reshape the inputs, e.g. x.reshape(batch, length)."
    )


def as_images(model: str, x: jax.Array) -> jax.Array:
    """Returns ``x`` as (B, H, W, C): a (B, H, W) grayscale batch gets a channel axis."""
    x = jnp.asarray(x)
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise ValueError(
        f"{model} expects an image batch of shape (B, H, W, C) or (B, H, W); got shape "
        f"{x.shape}. Fix: reshape the inputs to NHWC."
    )
