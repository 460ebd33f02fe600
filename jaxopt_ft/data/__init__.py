"""Offline datasets: built-in TFDS builders, whole-split loading, subsets and batch iterators.

``mnist1d`` and ``digits`` are generated from installed packages into the TFDS data dir on first
use; any other TFDS image classification dataset is read when already prepared there. Nothing is
ever downloaded. Training batches come from a grain pipeline (`jaxopt_ft.data.pipeline`) over a
split in memory (`load`) or, for a split larger than memory, read from its ArrayRecord files
(`Records`; `split_source` picks one by size).

Example::

    from jaxopt_ft import data

    train = data.load("mnist1d", "train")           # Dataset(x=(4000, 40) float32, label, ...)
    test = data.load("mnist1d", "test")
    batches = data.train_batches(train, batch_size=100, seed=0, start_step=0)
    for batch in data.eval_batches(test, batch_size=256):
        ...  # batch["x"], batch["label"], batch["mask"]
"""

from jaxopt_ft.data.builders import BUILTIN as BUILTIN
from jaxopt_ft.data.builders import input_shape as input_shape
from jaxopt_ft.data.builders import num_classes as num_classes
from jaxopt_ft.data.loader import Dataset as Dataset
from jaxopt_ft.data.loader import batch_at as batch_at
from jaxopt_ft.data.loader import clear_cache as clear_cache
from jaxopt_ft.data.loader import eval_batches as eval_batches
from jaxopt_ft.data.loader import load as load
from jaxopt_ft.data.loader import source as source
from jaxopt_ft.data.loader import split_source as split_source
from jaxopt_ft.data.loader import subset as subset
from jaxopt_ft.data.loader import train_batches as train_batches
from jaxopt_ft.data.records import Records as Records
from jaxopt_ft.data.targets import TargetSpec as TargetSpec
from jaxopt_ft.data.targets import available_targets as available_targets
from jaxopt_ft.data.targets import derive_targets as derive_targets

__all__ = [
    "BUILTIN",
    "Dataset",
    "Records",
    "TargetSpec",
    "available_targets",
    "batch_at",
    "clear_cache",
    "derive_targets",
    "eval_batches",
    "input_shape",
    "load",
    "num_classes",
    "source",
    "split_source",
    "subset",
    "train_batches",
]
