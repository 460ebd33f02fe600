"""The grain input pipeline: shuffled, per-process sharded, prefetched training batches.

Every training batch of every dataset goes through one `grain` pipeline::

    MapDataset.range(start_step, ...)          # global step k
      .map(rows of step k for this process)    # epoch permutation, this process's share
      .map(read those rows from the source)    # in-memory arrays or an ArrayRecord source
      .to_iter_dataset(ReadOptions(threads))   # background reading, prefetch buffer
      [.mp_prefetch(workers)]                  # worker processes, where reading costs
      .map(place)                              # e.g. onto the devices (prefetch to device)

The order is a pure function of ``(seed, step)``: epoch ``e`` is the permutation
``np.random.default_rng([seed, e]).permutation(n)`` cut into ``n // batch_size`` full batches
(the remainder is dropped), and batch ``k``'s rows are split into ``shard_count`` equal,
disjoint parts, part ``p`` read only by process ``p``. So the state of the iterator *is* the
global step: a run resumed from a checkpoint of step ``k`` starts the pipeline at ``k``
(``start_step``) and sees exactly the batches an uninterrupted run sees, with any number of
threads or workers.

A *source* is anything with ``len(source)`` rows and ``source.read(rows) -> {"x", "label"}``
(rows in the given order): a whole split in memory (`jaxopt_ft.data.Dataset`) or a split read
record by record from disk (`jaxopt_ft.data.records.Records`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grain
import numpy as np

__all__ = ["Source", "batch_at", "check_batch_size", "step_rows", "train_batches"]

Batch = dict[str, np.ndarray]


class Source(Protocol):
    """Random access to a split's normalised rows."""

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> Batch: ...


@functools.lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    rows = np.random.default_rng([seed, epoch]).permutation(n)
    rows.flags.writeable = False
    return rows


def step_rows(
    n: int, *, batch_size: int, seed: int, step: int, shard_index: int = 0, shard_count: int = 1
) -> np.ndarray:
    """The rows process ``shard_index`` of ``shard_count`` reads for global step ``step``.

    The global batch of ``step`` is ``batch_size`` rows of its epoch's permutation; process
    ``p`` reads the ``p``-th of ``shard_count`` equal consecutive parts of it.
    """
    epoch, position = divmod(step, n // batch_size)
    rows = _permutation(n, seed, epoch)[position * batch_size : (position + 1) * batch_size]
    local = batch_size // shard_count
    return rows[shard_index * local : (shard_index + 1) * local]


def check_batch_size(n: int, name: str, batch_size: int, *, train: bool, shards: int = 1) -> None:
    """Raises ValueError for a batch size that is not an int >= 1 or does not fit the data."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if train and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} examples of {name!r}; training "
            f"drops incomplete batches, so pass batch_size <= {n}."
        )
    if train and batch_size % shards:
        raise ValueError(
            f"batch_size={batch_size} does not split evenly over {shards} processes; pass a "
            f"multiple of {shards}."
        )


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}.")


def _check(source: Source, batch_size, seed, step, shard_index, shard_count) -> None:
    _check_int("seed", seed, 0)
    _check_int("start_step", step, 0)
    _check_int("shard_count", shard_count, 1)
    _check_int("shard_index", shard_index, 0)
    if shard_index >= shard_count:
        raise ValueError(f"shard_index={shard_index} must be < shard_count={shard_count}.")
    name = getattr(source, "name", "the data")
    check_batch_size(len(source), name, batch_size, train=True, shards=shard_count)


def batch_at(
    source: Source,
    *,
    batch_size: int,
    seed: int,
    step: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Batch:
    """The batch `train_batches` yields at global step ``step`` (this process's share)."""
    _check(source, batch_size, seed, step, shard_index, shard_count)
    return source.read(
        step_rows(
            len(source),
            batch_size=batch_size,
            seed=seed,
            step=step,
            shard_index=shard_index,
            shard_count=shard_count,
        )
    )


def _read_step(source: Source, rows_of: Callable[..., np.ndarray], step: int) -> Batch:
    return source.read(rows_of(step=step))


def train_batches(
    source: Source,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    threads: int = 1,
    workers: int = 0,
    prefetch: int = 4,
    place: Callable[[Batch], Any] | None = None,
) -> Iterator[Any]:
    """Endless training batches from global step ``start_step`` on, through grain.

    Args:
        source: the split (`jaxopt_ft.data.Dataset` in memory, or `data.records.Records`).
        batch_size: rows of the *global* batch, at most ``len(source)``, a multiple of
            ``shard_count``.
        seed: shuffling seed (>= 0).
        start_step: global step of the first batch (>= 0), e.g. a restored checkpoint's step.
        shard_index: this process's part of every global batch (``jax.process_index()``).
        shard_count: number of parts (``jax.process_count()``); this process reads only
            ``batch_size // shard_count`` rows per step.
        threads: grain reading threads (0: read in the consuming thread).
        workers: grain worker processes (0: none); pays when reading and decoding records
            costs more than sending the batch between processes.
        prefetch: batches read ahead per process.
        place: applied to every batch in the consuming process, e.g. a device put.

    Returns:
        An endless iterator of ``{"x": (batch_size // shard_count, ...) float32, "label":
        (...,) int32}`` batches (or what ``place`` makes of them).

    Raises:
        ValueError: for a batch size outside 1..len(source) or not divisible by
            ``shard_count``, a negative seed or start step, or a bad shard.
    """
    _check(source, batch_size, seed, start_step, shard_index, shard_count)
    _check_int("threads", threads, 0)
    _check_int("workers", workers, 0)
    _check_int("prefetch", prefetch, 0)
    rows_of = functools.partial(
        step_rows,
        len(source),
        batch_size=batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    ds = grain.MapDataset.range(start_step, sys.maxsize).map(
        functools.partial(_read_step, source, rows_of)
    )
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    it = ds.to_iter_dataset(options)
    if workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # grain's worker start-up reads an absl flag; outside absl.app (notebooks, tests)
            # nothing parsed the flags, and their defaults are what is wanted.
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    if place is not None:
        it = it.map(place)
    return iter(it)
