"""Splits read from disk row by row, and the normalisation statistics every split uses.

A split too large for host memory is a `Records` source: the grain pipeline
(`jaxopt_ft.data.pipeline`) reads each batch's rows from the ArrayRecord files, decodes and
normalises them, so memory holds a few batches, never the split. Normalisation uses the train
split's statistics, computed by a streaming pass (chunks of records, two passes in float64)
and cached next to the dataset as ``jaxopt_ft_stats.json``, so the pass runs once per dataset
and every process of every later run reads the same numbers. In-memory loading
(`jaxopt_ft.data.load`) uses the same statistics and the same formula, so a `Records` source
and a loaded `Dataset` give bit-identical rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxopt_ft.data import builders

__all__ = ["Records", "normalise", "split_mb", "train_stats"]

CHUNK = 4096  # records per chunk of the statistics pass, bounding its float64 temporaries
STATS_FILE = "jaxopt_ft_stats.json"

_STATS: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def scale(name: str) -> float:
    """The divisor that maps stored values to [0, 1] before standardising."""
    if name == "mnist1d":
        return 1.0  # already real-valued
    if name == "digits":
        return 16.0  # pixel values 0..16
    return 255.0  # uint8 images


def moments(
    chunks: Callable[[], Iterator[np.ndarray]], *, per_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation in float64 of the concatenated ``chunks()``, two passes.

    Over all axes, or all but the last (``per_channel``); ``chunks`` is called once per pass.
    """
    total, count, sample = None, 0, None
    for x in chunks():
        axes = tuple(range(x.ndim - 1)) if per_channel else None
        part = np.sum(x, axis=axes, dtype=np.float64)
        total = part if total is None else total + part
        count += x.size // (x.shape[-1] if per_channel else 1)
        sample = x
    if sample is None:
        raise ValueError("The train split is empty; normalisation needs at least one example.")
    mean = total / count
    squares = 0.0
    for x in chunks():
        axes = tuple(range(x.ndim - 1)) if per_channel else None
        squares = squares + np.sum(np.square(x - mean), axis=axes)
    return mean, np.sqrt(squares / count)


def train_stats(
    name: str, data_dir: str | None, train_x: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of the scaled train split: from memory, the cache file, or one pass.

    Args:
        name: dataset name.
        data_dir: TFDS data dir (``None``: the default).
        train_x: the raw train split when it is already in memory (saves reading it again).

    Returns:
        float64 mean and std (scalars for the built-in datasets, per channel for images).
    """
    key = (name, builders.data_dir_key(data_dir))
    if key not in _STATS:
        opened = builders.open_split(name, "train", data_dir=data_dir)
        path = os.path.join(os.fspath(opened.builder.data_path), STATS_FILE)
        n = len(opened.source)
        cached = _read_cache(path, n)
        if cached is None:
            cached = _compute_stats(name, opened, train_x)
            _write_cache(path, n, *cached)
        _STATS[key] = cached
    return _STATS[key]


def _compute_stats(name, opened: builders.Opened, train_x) -> tuple[np.ndarray, np.ndarray]:
    n = len(opened.source)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, n, CHUNK):
            if train_x is not None:
                yield train_x[start : start + CHUNK]
            else:
                rows = list(range(start, min(n, start + CHUNK)))
                yield builders.stack(opened, builders.read_records(opened.source, rows)).x

    s = scale(name)
    mean, std = moments(chunks, per_channel=name not in builders.BUILTIN)
    std = np.where(std > 0, std, s)  # a constant channel stays at 0 instead of nan
    return mean / s, std / s


def _read_cache(path: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with open(path) as f:
            rec = json.load(f)
        if rec["num_examples"] != n:  # the dataset was prepared again
            return None
        return np.asarray(rec["mean"], np.float64), np.asarray(rec["std"], np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: str, n: int, mean: np.ndarray, std: np.ndarray) -> None:
    rec = {"num_examples": n, "mean": mean.tolist(), "std": std.tolist()}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(rec, f)  # floats as repr: the float64 values come back exactly
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only data dir: the pass runs again next time, with the same result


def clear_cache() -> None:
    """Forgets the in-process statistics (the files in the data dirs stay)."""
    _STATS.clear()


def normalise(x: np.ndarray, name: str, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Raw stored values to float32 ``(x / scale - mean) / std``."""
    out = (x.astype(np.float32) / np.float32(scale(name)) - mean.astype(np.float32)) / (
        std.astype(np.float32)
    )
    return out.astype(np.float32, copy=False)


def split_mb(name: str, split: str, *, data_dir: str | None = None) -> float:
    """MiB a split takes in memory once normalised to float32 (read from its metadata)."""
    opened = builders.open_split(name, split, data_dir=data_dir)
    return len(opened.source) * math.prod(opened.shape) * 4 / 2**20


class Records:
    """A split on disk as a pipeline source: ``len`` and ``read(rows)``, normalised.

    Picklable (grain worker processes receive it): a copy opens the files again on first read.

    Args:
        name: ``"mnist1d"``, ``"digits"`` or a TFDS catalog name prepared in ``data_dir``.
        split: ``"train"`` or ``"test"``, optionally sliced (``"train[:25%]"``).
        data_dir: TFDS data dir; ``None`` uses TFDS's default.

    Raises:
        ValueError: as `builders.open_split` (unknown, unprepared, partly written, or not an
            image classification dataset).
    """

    def __init__(self, name: str, split: str, *, data_dir: str | None = None):
        self.name, self.split, self.data_dir = name, split, data_dir
        self._opened: builders.Opened | None = builders.open_split(name, split, data_dir=data_dir)
        self.num_classes = self._opened.num_classes
        self.shape = self._opened.shape
        self._len = len(self._opened.source)
        self.mean, self.std = train_stats(name, data_dir)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"Records({self.name!r}, {self.split!r}, {self._len} rows)"

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The rows ``rows`` (in that order) as ``{"x": float32, "label": int32}``."""
        if self._opened is None:
            self._opened = builders.open_split(self.name, self.split, data_dir=self.data_dir)
        raw = builders.stack(
            self._opened, builders.read_records(self._opened.source, [int(r) for r in rows])
        )
        return {"x": normalise(raw.x, self.name, self.mean, self.std), "label": raw.label}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}
