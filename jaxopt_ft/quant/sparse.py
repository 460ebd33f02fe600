"""Sparse encodings of quantized integers, for pruned models (numpy, exact round trips).

Two encodings of a tensor's integers in row-major order, zeros implicit:

- **bitmask**: one bit per entry (non-zero or not, ``np.packbits``) + the non-zero values.
  ``n / 8 + nnz * value_bytes`` bytes: at 90 % sparsity the mask alone is worth 1.25 values
  per non-zero, which caps the gain whatever the width.
- **relative** (Deep Compression, Han et al. 2016): each entry stores the number of zeros
  skipped since the previous entry in 4 bits, plus the value. A gap above 15 emits filler
  entries ``(15, 0)``, each advancing 16 positions and writing a zero. With int4 values an entry
  is one byte.

Values of 4 bits or fewer are packed two per byte, others take one byte (int8).
"""

from __future__ import annotations

import numpy as np

INDEX_BITS = 4
_MAX_GAP = 2**INDEX_BITS - 1


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Packs integers in ``[-8, 15]`` two per byte (first in the low nibble), zero-padded."""
    v = np.asarray(values).astype(np.int64).ravel() & 0xF
    if v.size % 2:
        v = np.append(v, 0)
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int, *, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: ``count`` values as int8 (sign-extended if ``signed``)."""
    p = np.asarray(packed, np.uint8).astype(np.int16)
    v = np.stack([p & 0xF, p >> 4], axis=-1).ravel()[:count]
    if signed:
        v = np.where(v >= 8, v - 16, v)
    return v.astype(np.int8)


def _pack_values(values: np.ndarray, bits: int) -> np.ndarray:
    return pack_nibbles(values) if bits <= 4 else np.asarray(values).astype(np.int8)


def _unpack_values(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    if bits <= 4:
        return unpack_nibbles(data, count, signed=True)
    return np.asarray(data).view(np.int8)[:count]


def encode_bitmask(q: np.ndarray, *, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Encodes signed integers (``bits`` <= 8) as ``(mask_bytes, value_bytes)``."""
    flat = np.asarray(q).ravel()
    nz = flat != 0
    return np.packbits(nz), _pack_values(flat[nz], bits)


def decode_bitmask(mask: np.ndarray, values: np.ndarray, size: int, *, bits: int) -> np.ndarray:
    """Inverse of :func:`encode_bitmask`: the flat int8 integers of length ``size``."""
    nz = np.unpackbits(np.asarray(mask, np.uint8), count=size).astype(bool)
    out = np.zeros(size, np.int8)
    out[nz] = _unpack_values(values, int(nz.sum()), bits)
    return out


def relative_entries(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gap and value per entry (fillers included) of the relative-index encoding."""
    flat = np.asarray(q).ravel()
    pos = np.flatnonzero(flat)
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each non-zero
    fillers = gaps // (_MAX_GAP + 1)
    reps = fillers + 1  # the fillers, then the real entry
    n = int(reps.sum())
    gap_out = np.full(n, _MAX_GAP, np.int64)
    val_out = np.zeros(n, np.int64)
    last = np.cumsum(reps) - 1  # index of each real entry
    gap_out[last] = gaps % (_MAX_GAP + 1)
    val_out[last] = flat[pos]
    return gap_out, val_out


def encode_relative(q: np.ndarray, *, bits: int) -> tuple[np.ndarray, int]:
    """Encodes signed integers (``bits`` <= 8) as ``(bytes, number of entries)``.

    With ``bits <= 4`` each byte is one entry: gap in the low nibble, value in the high one.
    Otherwise the packed gaps come first, then one int8 value per entry.
    """
    gaps, vals = relative_entries(q)
    if bits <= 4:
        data = ((gaps & 0xF) | ((vals & 0xF) << 4)).astype(np.uint8)
    else:
        data = np.concatenate([pack_nibbles(gaps), vals.astype(np.int8).view(np.uint8)])
    return data, int(gaps.size)


def decode_relative(data: np.ndarray, entries: int, size: int, *, bits: int) -> np.ndarray:
    """Inverse of :func:`encode_relative`: the flat int8 integers of length ``size``."""
    data = np.asarray(data, np.uint8)
    if bits <= 4:
        gaps = (data & 0xF).astype(np.int64)
        vals = (data >> 4).astype(np.int16)
        vals = np.where(vals >= 8, vals - 16, vals).astype(np.int8)
    else:
        nb = (entries + 1) // 2
        gaps = unpack_nibbles(data[:nb], entries, signed=False).astype(np.int64)
        vals = data[nb : nb + entries].view(np.int8)
    out = np.zeros(size, np.int8)
    pos = np.cumsum(gaps + 1) - 1
    out[pos] = vals
    return out
