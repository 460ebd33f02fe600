"""Finalizing pruned params: strip masks, export sparsely to disk, and summarize sparsity.

The sparse file is an uncompressed ``.npz`` holding, per leaf, either a bitmask
(``np.packbits`` of ``w != 0``, 1 bit per weight) or the flat indices of the non-zeros
(the smallest unsigned dtype that fits), plus the non-zero values as float32, and one JSON
header with paths, shapes and dtypes. Its size is measured on disk with ``os.path.getsize``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import tree
from jaxopt_ft.prune import masks as masks_lib
from jaxopt_ft.quant import sparse

PyTree = Any

FORMATS = ("bitmask", "indices")


def finalize(params: PyTree, masks: PyTree) -> PyTree:
    """Plain params with pruned entries set to zero (no masks needed afterwards).

    Raises:
      ValueError: ``masks`` does not match ``params``.
    """
    return masks_lib.apply_masks(params, masks)


def _index_dtype(size: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def export_sparse(params: PyTree, path: str | os.PathLike, *, format: str = "bitmask") -> int:
    """Writes the non-zero entries of ``params`` to ``path`` (an ``.npz``) and returns its size.

    Args:
      params: finalized params (pruned entries are zero); any pytree of arrays.
      path: output file; ``.npz`` is appended by numpy when missing, so pass a ``.npz`` name.
      format: ``"bitmask"`` (1 bit per weight) or ``"indices"`` (one index per non-zero;
        smaller above ~1 - 1/(8 * index bytes) sparsity).

    Returns:
      Bytes the file occupies on disk.

    Raises:
      ValueError: unknown ``format`` or a path without the ``.npz`` suffix.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown format {format!r}; accepted: {list(FORMATS)}. Fix: pass one.")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"export_sparse path {path!r} must end in '.npz'. Fix: rename it.")
    arrays: dict[str, np.ndarray] = {}
    header = {"format": format, "leaves": []}
    for i, (name, leaf) in enumerate(tree.flatten(params).items()):
        x = np.asarray(jax.device_get(leaf))
        header["leaves"].append({"path": name, "shape": list(x.shape), "dtype": str(x.dtype)})
        if format == "bitmask":
            mask, values = sparse.encode_bitmask(x)
            where = {f"m{i}": mask}
        else:
            nz = np.flatnonzero(x)
            where, values = {f"i{i}": nz.astype(_index_dtype(x.size))}, x.reshape(-1)[nz]
        arrays[f"v{i}"] = values.astype(np.float32)
        arrays.update(where)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    return os.path.getsize(path)


def load_sparse(path: str | os.PathLike, *, like: PyTree | None = None) -> PyTree:
    """Reads a file written by :func:`export_sparse` back into dense numpy params.

    Args:
      path: the ``.npz`` file.
      like: a pytree with the same paths whose structure the result takes; default nested
        dicts keyed by the path components.
    """
    with np.load(os.fspath(path)) as data:
        header = json.loads(data["header"].tobytes().decode())
        flat: dict[str, np.ndarray] = {}
        for i, leaf in enumerate(header["leaves"]):
            shape, dtype = tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
            size, values = int(np.prod(shape)), data[f"v{i}"]
            if header["format"] == "bitmask":
                dense = sparse.decode_bitmask(data[f"m{i}"], values, size)
            else:
                dense = np.zeros(size, values.dtype)
                dense[data[f"i{i}"].astype(np.int64)] = values
            flat[leaf["path"]] = dense.astype(dtype).reshape(shape)
    if like is not None:
        return tree.unflatten_like(like, flat)
    return tree.unflatten(flat)


def summary(
    params: PyTree, masks: PyTree, *, prunable: PyTree | None = None
) -> list[dict[str, Any]]:
    """Per-leaf rows ``{name, shape, params, nonzero, sparsity}`` and a ``"total"`` row.

    ``nonzero`` counts entries that are kept by ``masks`` and non-zero in ``params``. With
    ``prunable`` (from :func:`select_prunable`) rows get a ``prunable`` flag and a
    ``"total (prunable)"`` row is added before ``"total"``.

    Raises:
      ValueError: ``masks`` does not match ``params``.
    """
    masks_lib.check_masks(params, masks)
    m_flat = tree.flatten(masks)
    p_flags = tree.flatten(prunable) if prunable is not None else None
    rows = []
    for name, leaf in tree.flatten(params).items():
        x = np.asarray(jax.device_get(leaf))
        kept = np.asarray(jax.device_get(m_flat[name])) & (x != 0)
        row = {"name": name, "shape": tuple(x.shape), "params": int(x.size)}
        row["nonzero"] = int(np.count_nonzero(kept))
        row["sparsity"] = 1.0 - row["nonzero"] / row["params"] if x.size else 0.0
        if p_flags is not None:
            row["prunable"] = bool(p_flags[name])
        rows.append(row)

    def total(name: str, chosen: list[dict[str, Any]]) -> dict[str, Any]:
        n = sum(r["params"] for r in chosen)
        nz = sum(r["nonzero"] for r in chosen)
        out = {"name": name, "shape": (), "params": n, "nonzero": nz}
        out["sparsity"] = 1.0 - nz / n if n else 0.0
        if p_flags is not None:
            out["prunable"] = all(r["prunable"] for r in chosen)
        return out

    totals = []
    if p_flags is not None:
        totals.append(total("total (prunable)", [r for r in rows if r["prunable"]]))
    totals.append(total("total", rows))
    return rows + totals


def format_summary(rows: list[dict[str, Any]]) -> str:
    """Renders :func:`summary` rows as a fixed-width text table."""
    header = ["name", "shape", "params", "nonzero", "sparsity"]
    cells = [
        [
            str(r["name"]),
            "x".join(str(d) for d in r["shape"]) or "-",
            f"{r['params']:,}",
            f"{r['nonzero']:,}",
            f"{100 * r['sparsity']:.2f}%",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        # Name and shape left-aligned, numbers right-aligned.
        padded = [
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(c) for c in cells)])
