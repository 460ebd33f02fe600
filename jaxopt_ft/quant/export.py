"""Quantized artifacts on disk: an orbax checkpoint and a compact single-file export.

- :func:`save_quantized` / :func:`restore_quantized`: the QArray tree through orbax, with the
  static metadata (bits, axis, shape) saved beside as JSON, so a restore needs no target and
  int8/uint8 values come back as int8/uint8.
- :func:`export_quantized` / :func:`load_quantized`: one file, ``b"JFQ1"``, a 4-byte header
  length, a zlib-compressed JSON header and the raw payload: integers in ``dense``, ``bitmask``
  or ``relative`` encoding (see :mod:`jaxopt_ft.quant.sparse`), float32 scales, and the float
  leaves (biases) as they are. Its size is what a deployment would ship.

Sizes are measured on disk: :func:`directory_bytes` sums the files of a checkpoint directory;
:func:`compression` divides the fp32 dense size by it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxopt_ft import tree as tree_lib
from jaxopt_ft.quant import sparse
from jaxopt_ft.quant.core import QArray, dequantize, is_qarray, pack_int4

PyTree = Any
ENCODINGS = ("dense", "bitmask", "relative")
_MAGIC = b"JFQ1"


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size in bytes of the files under ``path`` (or of the file ``path``)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def compression(params: PyTree, nbytes: int) -> float:
    """``dense_fp32_bytes / nbytes``, with ``dense_fp32_bytes = 4 * number of params``."""
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params, is_leaf=is_qarray))
    return 4.0 * n / nbytes


def _qmeta(q: QArray) -> dict[str, Any]:
    return {
        "shape": list(q.shape),
        "bits": q.bits,
        "axis": None if q.axis is None else list(q.axis),
        "symmetric": q.symmetric,
        "dtype": q.dtype,
    }


def _qarray(meta: dict[str, Any], values: Any, scale: Any, zero_point: Any) -> QArray:
    return QArray(
        values=values,
        scale=scale,
        zero_point=zero_point,
        shape=tuple(meta["shape"]),
        bits=meta["bits"],
        axis=None if meta["axis"] is None else tuple(meta["axis"]),
        symmetric=meta["symmetric"],
        dtype=meta["dtype"],
    )


def save_quantized(directory: str | os.PathLike, qtree: PyTree) -> int:
    """Saves a tree of QArrays and arrays with orbax; returns its size on disk in bytes.

    Args:
      directory: A path that does not exist yet (orbax refuses to overwrite).
      qtree: Nested dicts (a linen param tree) with :class:`QArray` and array leaves.
    """
    meta = {}
    for path, x in tree_lib.flatten(qtree, is_leaf=is_qarray).items():
        if is_qarray(x):
            meta[path] = {
                "q": _qmeta(x),
                "values": [list(x.values.shape), np.dtype(x.values.dtype).name],
                "scale": list(x.scale.shape),
            }
        else:
            meta[path] = {"shape": list(np.shape(x)), "dtype": np.dtype(x.dtype).name}
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    directory = os.path.abspath(directory)
    ckptr.save(
        directory,
        ocp.args.Composite(arrays=ocp.args.StandardSave(qtree), meta=ocp.args.JsonSave(meta)),
    )
    return directory_bytes(directory)


def restore_quantized(directory: str | os.PathLike) -> PyTree:
    """Restores a tree saved by :func:`save_quantized`, QArrays and dtypes intact."""
    directory = os.path.abspath(directory)
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    meta = ckptr.restore(directory, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    flat = {}
    for path, m in meta.items():
        if "q" in m:
            vshape, vdtype = m["values"]
            s = jax.ShapeDtypeStruct(tuple(m["scale"]), np.float32)
            z = jax.ShapeDtypeStruct(tuple(m["scale"]), np.int32)
            v = jax.ShapeDtypeStruct(tuple(vshape), np.dtype(vdtype))
            flat[path] = _qarray(m["q"], v, s, z)
        else:
            flat[path] = jax.ShapeDtypeStruct(tuple(m["shape"]), np.dtype(m["dtype"]))
    target = tree_lib.unflatten(flat)
    restored = ckptr.restore(directory, ocp.args.Composite(arrays=ocp.args.StandardRestore(target)))
    return restored["arrays"]


def export_quantized(path: str | os.PathLike, qtree: PyTree, *, encoding: str = "dense") -> int:
    """Writes ``qtree`` to one compact file; returns its size in bytes.

    Args:
      path: Output file.
      qtree: Nested dicts with :class:`QArray` leaves (from ``quantize_params``) and float
        leaves, which are stored as they are.
      encoding: ``"dense"`` (all integers, int4 packed two per byte), ``"bitmask"`` or
        ``"relative"`` (sparse; need symmetric QArrays of at most 8 bits).

    Raises:
      ValueError: An unknown encoding, or a QArray the sparse encodings cannot hold.
    """
    if encoding not in ENCODINGS:
        raise ValueError(
            f"encoding={encoding!r} is unknown. Accepted: {', '.join(ENCODINGS)}. Fix: pass "
            "one of these."
        )
    header: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0

    def add(data: np.ndarray) -> list[int]:
        nonlocal offset
        b = np.ascontiguousarray(data).tobytes()
        blobs.append(b)
        offset += len(b)
        return [offset - len(b), len(b)]

    for name, x in tree_lib.flatten(qtree, is_leaf=is_qarray).items():
        if not is_qarray(x):
            a = np.asarray(x)
            header.append({"p": name, "s": list(a.shape), "t": a.dtype.name, "d": add(a)})
            continue
        entry = {"p": name, "q": _qmeta(x), "sc": add(np.asarray(x.scale, np.float32))}
        if not x.symmetric:
            entry["zp"] = add(np.asarray(x.zero_point, np.int32))
        if encoding == "dense":
            entry["e"] = "dense"
            entry["v"] = add(np.asarray(x.values))
        else:
            if not x.symmetric or x.bits > 8:
                raise ValueError(
                    f"export_quantized: {name!r} has bits={x.bits}, symmetric={x.symmetric}; "
                    f"encoding={encoding!r} stores signed values of at most 8 bits. Fix: "
                    "quantize it symmetric with bits <= 8, or use encoding='dense'."
                )
            q = np.asarray(x.int_values())
            entry["e"] = encoding
            if encoding == "bitmask":
                mask, vals = sparse.encode_bitmask(q, bits=x.bits)
                entry["m"], entry["v"] = add(mask), add(vals)
            else:
                data, n = sparse.encode_relative(q, bits=x.bits)
                entry["v"], entry["n"] = add(data), n
        header.append(entry)
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    with open(path, "wb") as f:
        f.write(_MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs))
    return os.path.getsize(path)


def load_quantized(path: str | os.PathLike, *, dequantized: bool = False) -> PyTree:
    """Reads a file written by :func:`export_quantized`.

    Args:
      path: The file.
      dequantized: Return float arrays (exactly ``dequantize`` of each QArray) instead of
        QArrays.

    Returns:
      Nested dicts with :class:`QArray` (or dequantized float) and float leaves.

    Raises:
      ValueError: The file does not start with the export's magic bytes.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] != _MAGIC:
        raise ValueError(
            f"{os.fspath(path)!r} is not a quantized export (bad magic). Fix: pass "
            "a file written by export_quantized."
        )
    (n,) = struct.unpack("<I", raw[4:8])
    header = json.loads(zlib.decompress(raw[8 : 8 + n]))
    body = memoryview(raw)[8 + n :]

    def get(span: list[int], dtype: Any) -> np.ndarray:
        return np.frombuffer(body[span[0] : span[0] + span[1]], dtype=dtype).copy()

    flat: dict[str, Any] = {}
    for e in header:
        if "q" not in e:
            flat[e["p"]] = get(e["d"], e["t"]).reshape(e["s"])
            continue
        m = e["q"]
        size = int(np.prod(m["shape"]))
        scale = get(e["sc"], np.float32)
        zp = get(e["zp"], np.int32) if "zp" in e else np.zeros(scale.shape, np.int32)
        stat_shape = [d if m["axis"] and i in m["axis"] else 1 for i, d in enumerate(m["shape"])]
        if e["e"] == "dense":
            vdtype = np.uint8 if m["bits"] <= 4 or not m["symmetric"] else np.int8
            if m["bits"] > 8:
                vdtype = np.int16 if m["symmetric"] else np.uint16
            values = get(e["v"], vdtype)
            if m["bits"] > 4:
                values = values.reshape(m["shape"])
        else:
            if e["e"] == "bitmask":
                q = sparse.decode_bitmask(
                    get(e["m"], np.uint8), get(e["v"], np.uint8), size, bits=m["bits"]
                )
            else:
                q = sparse.decode_relative(get(e["v"], np.uint8), e["n"], size, bits=m["bits"])
            values = pack_int4(q) if m["bits"] <= 4 else q.reshape(m["shape"])
        qa = _qarray(m, values, scale.reshape(stat_shape), zp.reshape(stat_shape))
        flat[e["p"]] = dequantize(qa) if dequantized else qa
    return tree_lib.unflatten(flat)
