"""Whole-split datasets in numpy, normalisation, stratified subsets and batch iterators.

Datasets here are small enough to hold in memory, so a split is read once into numpy and batches
are gathered from it by index through the grain pipeline (`jaxopt_ft.data.pipeline`). Training
batches are a pure function of ``(seed, step)``: the
permutation of epoch ``e`` comes from ``np.random.default_rng([seed, e])``, so a run resumed at
step ``k`` sees exactly the batches an uninterrupted run sees.

Example::

    train = data.load("mnist1d", "train")
    for step, batch in zip(range(100), data.train_batches(train, batch_size=100, seed=0)):
        ...  # batch["x"]: (100, 40) float32, batch["label"]: (100,) int32
"""

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxopt_ft.data import builders, pipeline, records

__all__ = [
    "Arrays",
    "Dataset",
    "batch_at",
    "clear_cache",
    "eval_batches",
    "load",
    "source",
    "split_source",
    "subset",
    "train_batches",
]


class Dataset(NamedTuple):
    """A whole split in memory.

    Attributes:
        x: ``(N, *input_shape)`` float32, normalised with the train split's statistics.
        label: ``(N,)`` int32 class ids in ``0..num_classes-1``.
        num_classes: number of classes.
        name: dataset name, e.g. ``"mnist1d"``.
    """

    x: np.ndarray
    label: np.ndarray
    num_classes: int
    name: str


_DATASETS: dict[tuple[str, str, str], Dataset] = {}


def clear_cache() -> None:
    """Forgets the in-process cache of loaded splits and normalisation statistics."""
    _DATASETS.clear()
    records.clear_cache()


def load(name: str, split: str, *, data_dir: str | None = None) -> Dataset:
    """Loads a whole split into numpy, normalised, preparing built-in data on first use.

    Normalisation always uses the train split's statistics (also for the test split):

    - ``mnist1d``: ``(x - mean) / std`` with scalar mean and std of the train features.
    - ``digits``: ``x / 16``, then standardised with the scalar train mean and std.
    - any other TFDS image dataset: ``x / 255``, then standardised per channel with the train
      split's per-channel mean and std (computed over the whole train split by a streaming
      pass, cached in the data dir: `jaxopt_ft.data.records.train_stats`).

    Loaded splits are cached in-process by ``(name, split, data_dir)``; the cached arrays are
    read-only, so take a copy before changing them in place (``clear_cache`` empties the cache).

    Args:
        name: ``"mnist1d"``, ``"digits"``, or a TFDS image classification dataset (``"mnist"``,
            ``"cifar10"``, ...) already prepared as ArrayRecord in ``data_dir``.
        split: ``"train"`` or ``"test"``, optionally sliced the TFDS way (``"train[:25%]"``).
        data_dir: TFDS data dir; ``None`` uses TFDS's default (``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``).

    Returns:
        The split as a `Dataset` with float32 ``x`` and int32 ``label``.

    Raises:
        ValueError: for an unknown name or split, or a TFDS dataset that is not prepared (the
            message says how to prepare it); nothing is ever downloaded.
    """
    key_dir = builders.data_dir_key(data_dir)
    cache_key = (name, split, key_dir)
    if cache_key not in _DATASETS:
        raw = builders.read(name, split, data_dir=data_dir)
        mean, std = records.train_stats(name, data_dir, raw.x if split == "train" else None)
        x = records.normalise(raw.x, name, mean, std)
        label = raw.label.astype(np.int32)
        x.flags.writeable = False
        label.flags.writeable = False
        classes = builders.num_classes(name, data_dir=data_dir)
        _DATASETS[cache_key] = Dataset(x=x, label=label, num_classes=classes, name=name)
    return _DATASETS[cache_key]


def subset(
    ds: Dataset,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int,
) -> Dataset:
    """Returns a stratified subset, optionally restricted to some classes and relabelled.

    Within each class, examples are drawn without replacement with
    ``np.random.default_rng(seed)``; the subset keeps the original order of ``ds``.

    Args:
        ds: the dataset to draw from.
        fraction: keep ``max(1, round(fraction * n_c))`` examples of each class with ``n_c``
            examples; in (0, 1].
        per_class: keep exactly this many examples of each class (>= 1).
        classes: keep only these classes (distinct ids of ``ds``) and relabel ``classes[j]`` as
            ``j``, so the result has ``len(classes)`` classes. ``None`` keeps all classes.
        seed: seed of the draw.

    Returns:
        The subset, with ``num_classes == len(classes)`` when ``classes`` is given.

    Raises:
        ValueError: when both or none of ``fraction``, ``per_class`` and ``classes`` are given,
            ``fraction`` is outside (0, 1], ``per_class`` is below 1 or above a class's count, or
            ``classes`` has unknown or repeated ids.

    Example::

        pretrain = subset(train, classes=range(5), seed=0)               # digits 0-4 as 0-4
        adapt = subset(train, per_class=20, classes=range(5, 10), seed=0)  # 5-9 as 0-4
    """
    if fraction is not None and per_class is not None:
        raise ValueError(
            f"Got fraction={fraction!r} and per_class={per_class!r}; pass only one of them."
        )
    if fraction is None and per_class is None and classes is None:
        raise ValueError("subset needs fraction, per_class or classes; pass at least one.")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} is outside (0, 1]; pass e.g. fraction=0.1.")
    if per_class is not None and (isinstance(per_class, bool) or per_class < 1):
        raise ValueError(f"per_class={per_class!r} must be an integer >= 1.")

    counts = np.bincount(ds.label, minlength=ds.num_classes)
    if classes is None:
        keep = [int(c) for c in np.flatnonzero(counts)]
        num_classes = ds.num_classes
    else:
        keep = [int(c) for c in classes]
        bad = [c for c in keep if not 0 <= c < ds.num_classes]
        if bad or len(set(keep)) != len(keep) or not keep:
            raise ValueError(
                f"classes={list(classes)!r} must be distinct ids in 0..{ds.num_classes - 1} "
                f"of {ds.name!r}; fix the class list."
            )
        num_classes = len(keep)

    index = _stratified_rows(ds, keep, counts, fraction=fraction, per_class=per_class, seed=seed)
    label = ds.label[index]
    if classes is not None:
        relabel = np.full(ds.num_classes, -1, np.int32)
        relabel[keep] = np.arange(len(keep), dtype=np.int32)
        label = relabel[label]
    return Dataset(
        x=ds.x[index], label=label.astype(np.int32), num_classes=num_classes, name=ds.name
    )


def _stratified_rows(ds, keep, counts, *, fraction, per_class, seed) -> np.ndarray:
    """Sorted row indices: ``per_class`` rows, or ``fraction`` of each class of ``keep``."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in keep:
        members = np.flatnonzero(ds.label == c)
        if per_class is not None:
            if per_class > len(members):
                raise ValueError(
                    f"per_class={per_class} but class {c} of {ds.name!r} has only "
                    f"{len(members)} examples; pass per_class <= {int(counts[keep].min())}."
                )
            take = per_class
        elif fraction is not None:
            take = max(1, round(fraction * len(members))) if len(members) else 0
        else:
            take = len(members)
        rows.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(rows)) if rows else np.zeros((0,), np.int64)


class Arrays(NamedTuple):
    """A `Dataset` as a grain-pipeline source (`jaxopt_ft.data.pipeline.Source`)."""

    ds: Dataset

    @property
    def name(self) -> str:
        return self.ds.name

    def __len__(self) -> int:
        return len(self.ds.label)

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": self.ds.x[rows], "label": self.ds.label[rows]}


def source(ds: Dataset | pipeline.Source) -> pipeline.Source:
    """``ds`` as a pipeline source: a `Dataset` is wrapped, a source is returned as it is."""
    return Arrays(ds) if isinstance(ds, Dataset) else ds


def batch_at(
    ds: Dataset | pipeline.Source, *, batch_size: int, seed: int, step: int
) -> dict[str, np.ndarray]:
    """Returns the training batch of global step `step` (what `train_batches` yields there).

    Args:
        ds: the training data (in memory, or a `jaxopt_ft.data.records.Records` source).
        batch_size: examples per batch, at most ``len(ds.label)``.
        seed: shuffling seed (>= 0).
        step: global step (>= 0).

    Returns:
        ``{"x": (batch_size, ...) float32, "label": (batch_size,) int32}``.

    Raises:
        ValueError: for a batch size outside 1..len(ds), or a negative seed or step.
    """
    if isinstance(step, int | np.integer) and step < 0:
        raise ValueError(f"step={step} must be >= 0.")
    return pipeline.batch_at(source(ds), batch_size=batch_size, seed=seed, step=step)


def train_batches(
    ds: Dataset | pipeline.Source,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    **options: Any,
) -> Iterator[dict[str, np.ndarray]]:
    """Returns endless shuffled training batches, starting at global step `start_step`.

    The grain pipeline of `jaxopt_ft.data.pipeline`: each epoch is a fresh permutation from
    ``np.random.default_rng([seed, epoch])`` cut into ``len(ds) // batch_size`` full batches
    (the remainder is dropped), so the batch at step ``k`` is a pure function of ``(seed, k)``
    and a resumed run sees the same batches.

    Args:
        ds: the training data (in memory, or a `jaxopt_ft.data.records.Records` source).
        batch_size: examples per (global) batch, at most ``len(ds.label)``.
        seed: shuffling seed (>= 0).
        start_step: global step of the first batch (>= 0), e.g. a restored checkpoint's step.
        **options: `pipeline.train_batches`'s ``shard_index``, ``shard_count``, ``threads``,
            ``workers``, ``prefetch`` and ``place``.

    Returns:
        An endless iterator of ``{"x": (batch_size, ...) float32, "label": (batch_size,) int32}``.

    Raises:
        ValueError: for a batch size outside 1..len(ds), or a negative seed or start step.
    """
    return pipeline.train_batches(
        source(ds), batch_size=batch_size, seed=seed, start_step=start_step, **options
    )


def eval_batches(
    ds: Dataset | pipeline.Source, *, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Returns one pass over `ds` in order, in batches of the same shape.

    The last batch is padded with zero rows; ``mask`` marks real rows with 1 and padding with 0,
    so a jitted eval step compiles once and ``sum(mask)`` counts every example exactly once.

    Args:
        ds: the data to evaluate on (in memory, or a `jaxopt_ft.data.records.Records` source,
            read a batch at a time).
        batch_size: rows per batch (>= 1); may exceed ``len(ds.label)``.

    Returns:
        An iterator of ``{"x": (batch_size, ...) float32, "label": (batch_size,) int32,
        "mask": (batch_size,) float32}`` batches, ``ceil(len(ds) / batch_size)`` of them.

    Raises:
        ValueError: for a batch size below 1.
    """
    src = source(ds)
    pipeline.check_batch_size(len(src), src.name, batch_size, train=False)
    return _eval_batches(src, batch_size)


def _eval_batches(src: pipeline.Source, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(src)
    for start in range(0, n, batch_size):
        batch = src.read(np.arange(start, min(n, start + batch_size)))
        x, label = batch["x"], batch["label"]
        real = len(label)
        mask = np.ones((batch_size,), np.float32)
        if real < batch_size:
            pad = batch_size - real
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            label = np.concatenate([label, np.zeros((pad,), label.dtype)])
            mask[real:] = 0.0
        yield {"x": x, "label": label, "mask": mask}


def split_source(
    name: str, split: str, *, data_dir: str | None = None, in_memory_mb: float = 1024.0
) -> Dataset | records.Records:
    """The split in memory (`load`) when it takes at most ``in_memory_mb`` MiB as float32,
    else read from disk batch by batch (`records.Records`); both feed the same pipeline.

    Raises:
        ValueError: as `load`, or for a negative ``in_memory_mb``.
    """
    if isinstance(in_memory_mb, bool) or not isinstance(in_memory_mb, int | float):
        raise ValueError(f"in_memory_mb={in_memory_mb!r} must be a number >= 0.")
    if in_memory_mb < 0:
        raise ValueError(f"in_memory_mb={in_memory_mb!r} must be >= 0 (0: always from disk).")
    if records.split_mb(name, split, data_dir=data_dir) <= in_memory_mb:
        return load(name, split, data_dir=data_dir)
    return records.Records(name, split, data_dir=data_dir)
