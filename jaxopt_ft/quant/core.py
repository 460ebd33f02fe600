"""Uniform affine quantization: fake_quant (STE), QArray, quantize / dequantize, int4 packing.

One function, :func:`qparams`, turns a range ``(lo, hi)`` into ``(scale, zero_point)``; one,
:func:`quantize_values`, turns floats into integers. :func:`fake_quant`, :func:`quantize`, the
QAT/PTQ forward and the int8 inference path all call these two, so the fake-quant model and the
integer model see the same integers: same rounding (half to even), same scales.

Symmetric: ``scale = absmax / qmax`` with ``qmax = 2**(bits-1) - 1``, integers in
``[-qmax, qmax]``, zero point 0. Asymmetric: the range is widened to include 0,
``scale = (hi - lo) / (2**bits - 1)``, an integral zero point ``round(-lo / scale)``, integers in
``[0, 2**bits - 1]``. In both, 0.0 maps to the zero point and back to exactly 0.0, so pruned
zeros survive quantization.

Divisions are written as multiplications by a reciprocal (``x * (1 / scale)``): XLA compiles
``x / broadcast(scale)`` and ``x / constant`` to exactly that, so spelling it out makes eager,
jitted and numpy code agree bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Axis = int | Sequence[int] | None

MIN_BITS = 2
MAX_BITS = 16


def check_bits(bits: Any, *, what: str = "bits") -> int:
    """Returns ``bits`` as an int, or raises ValueError when it is not an integer in 2..16."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(
            f"{what}={bits!r} is not an integer. Accepted: integers {MIN_BITS}-{MAX_BITS} "
            "(2-8 and 16 are typical). Fix: pass e.g. bits=8."
        )
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(
            f"{what}={bits} is out of range. Accepted: integers {MIN_BITS}-{MAX_BITS} "
            f"(2-8 and 16 are typical). Fix: pass a width between {MIN_BITS} and {MAX_BITS}."
        )
    return int(bits)


def canonical_axis(axis: Axis, ndim: int) -> tuple[int, ...] | None:
    """Normalizes the kept (channel) axes to sorted non-negative ints, validating the range.

    Raises:
        ValueError: An axis is not in ``[-ndim, ndim)`` or is repeated.
    """
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim:
            raise ValueError(
                f"axis={axis!r} is out of range for a {ndim}-d array. Accepted: None (per "
                f"tensor) or channel axes in [{-ndim}, {ndim}). Fix: pass e.g. axis=-1 for a "
                "kernel's output channels, or axis=None."
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis={axis!r} repeats an axis. Fix: list each channel axis once.")
    return tuple(sorted(out))


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-wide quantizer."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams(
    lo: jax.typing.ArrayLike, hi: jax.typing.ArrayLike, *, bits: int, symmetric: bool
) -> tuple[jax.Array, jax.Array]:
    """Scale and (float, integral) zero point for the float range ``[lo, hi]``.

    A zero-width range (an all-zero tensor) gets scale 1, so it quantizes to zeros.

    Args:
      lo: Range minimum (any shape; per-channel ranges keep their channel shape).
      hi: Range maximum, same shape as ``lo``.
      bits: Integer width, 2-16.
      symmetric: Absmax scaling with zero point 0, else min/max with an integral zero point.

    Returns:
      ``(scale, zero_point)`` as float32 arrays of ``lo``'s shape.
    """
    lo = jnp.asarray(lo, jnp.float32)
    hi = jnp.asarray(hi, jnp.float32)
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) * (1.0 / qmax)
        scale = jnp.where(scale > 0, scale, 1.0)
        return scale, jnp.zeros_like(scale)
    lo = jnp.minimum(lo, 0.0)
    hi = jnp.maximum(hi, 0.0)
    scale = (hi - lo) * (1.0 / qmax)
    scale = jnp.where(scale > 0, scale, 1.0)
    zero_point = jnp.clip(jnp.round(-lo * (1.0 / scale)), qmin, qmax)
    return scale, zero_point


def quantize_values(
    x: jax.Array, scale: jax.Array, zero_point: jax.Array, *, bits: int, symmetric: bool
) -> jax.Array:
    """``clip(round_half_even(x * (1 / scale)) + zero_point)`` as float32 integers."""
    qmin, qmax = qrange(bits, symmetric)
    return jnp.clip(jnp.round(x.astype(jnp.float32) * (1.0 / scale)) + zero_point, qmin, qmax)


def _reduce_axes(ndim: int, keep: tuple[int, ...] | None) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if keep is None or i not in keep)


def _stat_shape(shape: tuple[int, ...], keep: tuple[int, ...] | None) -> tuple[int, ...]:
    return tuple(1 if keep is None or i not in keep else d for i, d in enumerate(shape))


def _bounds(x: jax.Array, keep: tuple[int, ...] | None, bounds: Any) -> tuple[Any, Any]:
    if bounds is None:
        red = _reduce_axes(x.ndim, keep)
        xf = x.astype(jnp.float32)
        return jnp.min(xf, axis=red, keepdims=True), jnp.max(xf, axis=red, keepdims=True)
    shape = _stat_shape(x.shape, keep)
    out = []
    for v in bounds:
        v = jnp.asarray(v, jnp.float32)
        if v.size == 1:
            out.append(jnp.broadcast_to(v.reshape(()), shape))
        elif v.size == math.prod(shape):
            out.append(v.reshape(shape))
        else:
            raise ValueError(
                f"bounds entry of shape {v.shape} does not fit x of shape {x.shape} with "
                f"axis={keep}. Accepted: scalars, or one value per channel "
                f"({math.prod(shape)}). Fix: pass ranges calibrated with the same axis."
            )
    return out[0], out[1]


def fake_quant(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    symmetric: bool = True,
    bounds: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
) -> jax.Array:
    """Quantizes and dequantizes ``x``, with a clipped straight-through gradient.

    The value is exactly ``dequantize(quantize(x, ...))``. The gradient is 1 where ``x`` lies in
    the representable range ``[(qmin - zp) * scale, (qmax - zp) * scale]`` and 0 outside it;
    the range itself (scale, zero point) gets no gradient.

    Args:
      x: Float array.
      bits: Integer width, 2-16.
      axis: None for one scale per tensor, or the channel axis (axes) that keep their own
        scale, e.g. ``-1`` for a kernel's output channels.
      symmetric: Absmax scaling with integers in ``[-qmax, qmax]``, else min/max with an
        integral zero point and integers in ``[0, 2**bits - 1]``.
      bounds: Optional precomputed ``(lo, hi)`` (e.g. calibrated activation ranges): scalars,
        or one value per channel of ``axis``. Default: the min/max of ``x``.

    Returns:
      The fake-quantized array, ``x``'s shape and dtype.

    Raises:
      ValueError: ``bits`` outside 2-16, ``axis`` out of range, or ill-shaped ``bounds``.

    Example:
      >>> fake_quant(jnp.array([-1.0, -0.5, 0.5, 1.5, 3.0]), bits=3)  # scale 1, half to even
      Array([-1.,  0.,  0.,  2.,  3.], dtype=float32)
    """
    bits = check_bits(bits)
    x = jnp.asarray(x)
    keep = canonical_axis(axis, x.ndim)
    return _fake_quant(x, bounds, bits=bits, keep=keep, symmetric=bool(symmetric))


# Jitted inner functions: one compile per (shape, mode) instead of one per eager op.
@functools.partial(jax.jit, static_argnames=("bits", "keep", "symmetric"))
def _fake_quant(
    x: jax.Array, bounds: Any, *, bits: int, keep: tuple[int, ...] | None, symmetric: bool
) -> jax.Array:
    lo, hi = _bounds(x, keep, bounds)
    scale, zp = jax.lax.stop_gradient(qparams(lo, hi, bits=bits, symmetric=symmetric))
    q = quantize_values(jax.lax.stop_gradient(x), scale, zp, bits=bits, symmetric=symmetric)
    deq = (q - zp) * scale
    qmin, qmax = qrange(bits, symmetric)
    inside = (x >= (qmin - zp) * scale) & (x <= (qmax - zp) * scale)
    # deq + (m - m) equals deq bit for bit, while d/dx is the in-range indicator. The usual
    # `x + stop_gradient(deq - x)` is off by float rounding, which would break exact agreement
    # with the integer path.
    m = jnp.where(inside, x, jnp.zeros_like(x)).astype(jnp.float32)
    return (deq + (m - jax.lax.stop_gradient(m))).astype(x.dtype)


def _storage_dtype(bits: int, symmetric: bool) -> np.dtype:
    if bits <= 8:
        return np.dtype(np.int8 if symmetric else np.uint8)
    return np.dtype(np.int16 if symmetric else np.uint16)


def _array_module(x: Any) -> Any:
    # Export runs on the host in numpy (eager jax would compile per leaf shape); QArray code
    # runs under jit. One implementation serves both.
    return jnp if isinstance(x, jax.Array) else np


def pack_int4(values: jax.typing.ArrayLike) -> jax.Array | np.ndarray:
    """Packs 4-bit integers two per byte, row-major, first value in the low nibble.

    Args:
      values: Integers in ``[-8, 7]`` (signed) or ``[0, 15]`` (unsigned), any shape. An odd
        count gets one zero nibble of padding.

    Returns:
      A flat uint8 array of ``ceil(size / 2)`` bytes: a numpy array for numpy (or Python)
      input, else a jax array (also under ``jit``). The shape is not stored: keep it beside.
    """
    xp = _array_module(values)
    v = xp.ravel(xp.asarray(values)).astype(xp.int32) & 0xF
    if v.size % 2:
        v = xp.concatenate([v, xp.zeros((1,), xp.int32)])
    return (v[0::2] | (v[1::2] << 4)).astype(xp.uint8)


def unpack_int4(
    packed: jax.typing.ArrayLike, shape: Sequence[int], *, signed: bool
) -> jax.Array | np.ndarray:
    """Inverse of :func:`pack_int4`: returns int8 values of ``shape`` (numpy for numpy input).

    Args:
      packed: The uint8 bytes from :func:`pack_int4`.
      shape: The original shape.
      signed: Sign-extend the nibbles (values were in ``[-8, 7]``), else read ``[0, 15]``.
    """
    xp = _array_module(packed)
    p = xp.asarray(packed).astype(xp.int32)
    v = xp.stack([p & 0xF, (p >> 4) & 0xF], axis=-1).reshape(-1)
    if signed:
        v = xp.where(v >= 8, v - 16, v)
    n = math.prod(shape)
    return v[:n].reshape(tuple(shape)).astype(xp.int8)


@struct.dataclass
class QArray:
    """A quantized array: integers, scale and zero point, plus static metadata.

    ``dequantize(q) == (values - zero_point) * scale``. Values are int8 (symmetric) or uint8
    (asymmetric) for up to 8 bits, int16/uint16 up to 16 bits, and for 4 bits or fewer two per
    byte in a flat uint8 array (``packed``); ``shape`` keeps the original shape.

    Attributes:
      values: The integers (packed for ``bits <= 4``).
      scale: float32, ``shape`` with reduced axes set to 1 (one entry per channel).
      zero_point: int32, like ``scale``; all zeros when ``symmetric``.
      shape: Original shape.
      bits: Integer width.
      axis: Kept channel axes (non-negative), or None for per-tensor.
      symmetric: Whether the zero point is 0 and integers are signed.
      dtype: Name of the float dtype that :func:`dequantize` returns.
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    shape: tuple[int, ...] = struct.field(pytree_node=False)
    bits: int = struct.field(pytree_node=False)
    axis: tuple[int, ...] | None = struct.field(pytree_node=False)
    symmetric: bool = struct.field(pytree_node=False)
    dtype: str = struct.field(pytree_node=False, default="float32")

    @property
    def packed(self) -> bool:
        """Whether values hold two 4-bit integers per byte."""
        return self.bits <= 4

    @property
    def nbytes(self) -> int:
        """Bytes of the integer payload plus scales (and zero points when asymmetric)."""
        n = self.values.size * self.values.dtype.itemsize + self.scale.size * 4
        return int(n if self.symmetric else n + self.zero_point.size * 4)

    def int_values(self) -> jax.Array:
        """The integers unpacked to ``shape`` (int8/uint8 up to 8 bits, else 16-bit)."""
        if not self.packed:
            return self.values
        v = unpack_int4(self.values, self.shape, signed=self.symmetric)
        return v if self.symmetric else v.astype(jnp.uint8)


def quantize(
    x: jax.typing.ArrayLike,
    *,
    bits: int,
    axis: Axis = None,
    symmetric: bool = True,
    bounds: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] | None = None,
) -> QArray:
    """Quantizes ``x`` to a :class:`QArray` (arguments as in :func:`fake_quant`).

    Raises:
      ValueError: ``bits`` outside 2-16, ``axis`` out of range, or ill-shaped ``bounds``.
    """
    bits = check_bits(bits)
    x = jnp.asarray(x)
    keep = canonical_axis(axis, x.ndim)
    return _quantize(x, bounds, bits=bits, keep=keep, symmetric=bool(symmetric))


@functools.partial(jax.jit, static_argnames=("bits", "keep", "symmetric"))
def _quantize(
    x: jax.Array, bounds: Any, *, bits: int, keep: tuple[int, ...] | None, symmetric: bool
) -> QArray:
    lo, hi = _bounds(x, keep, bounds)
    scale, zp = qparams(lo, hi, bits=bits, symmetric=symmetric)
    q = quantize_values(x, scale, zp, bits=bits, symmetric=symmetric)
    if bits <= 4:
        values = pack_int4(q.astype(jnp.int32))
    else:
        values = q.astype(_storage_dtype(bits, symmetric))
    return QArray(
        values=values,
        scale=scale,
        zero_point=zp.astype(jnp.int32),
        shape=tuple(x.shape),
        bits=bits,
        axis=keep,
        symmetric=symmetric,
        dtype=np.dtype(x.dtype).name,
    )


@jax.jit
def dequantize(q: QArray) -> jax.Array:
    """Returns ``(values - zero_point) * scale`` with ``q``'s original shape and dtype."""
    v = q.int_values().astype(jnp.float32).reshape(q.shape)
    return ((v - q.zero_point.astype(jnp.float32)) * q.scale).astype(q.dtype)


def is_qarray(x: Any) -> bool:
    """Whether ``x`` is a :class:`QArray` (usable as ``is_leaf`` in tree maps)."""
    return isinstance(x, QArray)
