"""Sparse encodings of quantized integers, for pruned models (numpy, exact round trips).

Two encodings of a tensor's integers in row-major order, zeros implicit:

- **bitmask**: one bit per entry (non-zero or not, ``np.packbits``) + the non-zero values.
  ``n / 8 + nnz * value_bytes`` bytes: at 90 % sparsity the mask alone is worth 1.25 values
  per non-zero, which caps the gain whatever the width.
- **relative** (Deep Compression, Han et al. 2016): each entry stores the number of zeros
  skipped since the previous entry in 4 bits, plus the value. A gap above 15 emits filler
  entries ``(15, 0)``, each advancing 16 positions and writing a zero. With int4 values an entry
  is one byte.

Values of 4 bits or fewer are packed two per byte, others take one byte (int8). The bitmask
encoding also stores pruned float weights as they are (``bits=None``; used by
:func:`jaxopt_ft.prune.export_sparse`).
"""

from __future__ import annotations

import numpy as np

from jaxopt_ft.quant.core import pack_int4, unpack_int4

INDEX_BITS = 4
_MAX_GAP = 2**INDEX_BITS - 1


def _pack_values(values: np.ndarray, bits: int | None) -> np.ndarray:
    if bits is None:
        return values
    return pack_int4(values) if bits <= 4 else values.astype(np.int8)


def _unpack_values(data: np.ndarray, count: int, bits: int | None) -> np.ndarray:
    if bits is None:
        return np.asarray(data)
    if bits <= 4:
        return unpack_int4(np.asarray(data, np.uint8), (count,), signed=True)
    return np.asarray(data).view(np.int8)[:count]


def encode_bitmask(x: np.ndarray, *, bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encodes ``x`` row-major as ``(mask, values)``: its non-zeros' positions and values.

    The mask holds one bit per entry (``np.packbits`` of ``x != 0``).

    Args:
      x: Any array. Pruned float weights keep their dtype (``bits=None``).
      bits: For signed integers of at most 8 bits, their width: up to 4 packs the values two
        per byte, else they are stored as int8. None stores the values as they are.
    """
    flat = np.asarray(x).ravel()
    nz = flat != 0
    return np.packbits(nz), _pack_values(flat[nz], bits)


def decode_bitmask(
    mask: np.ndarray, values: np.ndarray, size: int, *, bits: int | None = None
) -> np.ndarray:
    """Inverse of :func:`encode_bitmask`: the flat array of length ``size``.

    Its dtype is int8 for integers encoded with ``bits``, else the dtype of ``values``.
    """
    nz = np.unpackbits(np.asarray(mask, np.uint8), count=size).astype(bool)
    nonzeros = _unpack_values(values, int(nz.sum()), bits)
    out = np.zeros(size, nonzeros.dtype)
    out[nz] = nonzeros
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
        data = pack_int4(np.stack([gaps, vals], axis=-1))
    else:
        data = np.concatenate([pack_int4(gaps), vals.astype(np.int8).view(np.uint8)])
    return data, int(gaps.size)


def decode_relative(data: np.ndarray, entries: int, size: int, *, bits: int) -> np.ndarray:
    """Inverse of :func:`encode_relative`: the flat int8 integers of length ``size``."""
    data = np.asarray(data, np.uint8)
    if bits <= 4:
        pairs = unpack_int4(data, (entries, 2), signed=True)
        gaps = pairs[:, 0].astype(np.int64) & 0xF  # gaps are unsigned: undo the sign extension
        vals = pairs[:, 1]
    else:
        nb = (entries + 1) // 2
        gaps = unpack_int4(data[:nb], (entries,), signed=False).astype(np.int64)
        vals = data[nb : nb + entries].view(np.int8)
    out = np.zeros(size, np.int8)
    pos = np.cumsum(gaps + 1) - 1
    out[pos] = vals
    return out
