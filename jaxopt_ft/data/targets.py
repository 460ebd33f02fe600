"""Auxiliary targets computed from a digit dataset, for multi-task learning; never invented.

- ``digit``: the class label (10-way).
- ``parity``: ``label % 2`` (2-way).
- ``large``: ``label >= 5`` (2-way).
- ``slope`` (``mnist1d`` only): the least-squares slope of the signal against its position in
  [-0.5, 0.5]. The MNIST-1D generator tilts every signal by a random shear, so the slope mostly
  measures that nuisance variable: the digit explains about 2 % of its variance.
- ``ink`` (``digits`` only): the mean pixel intensity, i.e. the ink mass of the image.

Regression targets are z-scored with a reference split's (the training split's) mean and
standard deviation, so a test MSE of 1.0 is what predicting the training mean scores, and
``1 - mse`` is roughly R².
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxopt_ft.data.loader import Dataset

# Targets derivable from any 10-class digit dataset; regression targets per dataset.
_LABEL_TARGETS = {"digit": 10, "parity": 2, "large": 2}
_REGRESSION_TARGETS = {"mnist1d": ("slope",), "digits": ("ink",)}


class TargetSpec(NamedTuple):
    """What a derived target is: ``kind`` ("classification" or "regression") and its classes."""

    kind: str
    num_classes: int


def available_targets(dataset: str, *, num_classes: int = 10) -> dict[str, TargetSpec]:
    """The targets :func:`derive_targets` computes for ``dataset`` (a ``num_classes``-way one)."""
    out = {}
    if num_classes == 10:
        out = {name: TargetSpec("classification", n) for name, n in _LABEL_TARGETS.items()}
    for name in _REGRESSION_TARGETS.get(dataset, ()):
        out[name] = TargetSpec("regression", 1)
    return out


def _raw(name: str, ds: Dataset) -> np.ndarray:
    label = np.asarray(ds.label)
    if name == "digit":
        return label.astype(np.int32)
    if name == "parity":
        return (label % 2).astype(np.int32)
    if name == "large":
        return (label >= 5).astype(np.int32)
    x = np.asarray(ds.x, np.float64).reshape(len(label), -1)
    if name == "slope":
        pos = np.linspace(-0.5, 0.5, x.shape[1])
        pos = pos - pos.mean()
        return (x - x.mean(1, keepdims=True)) @ pos / (pos @ pos)
    return x.mean(1)  # ink


def derive_targets(
    ds: Dataset, names: Sequence[str], *, reference: Dataset | None = None
) -> dict[str, np.ndarray]:
    """Computes the named targets of every example of ``ds``.

    Args:
        ds: the split to label.
        names: targets among :func:`available_targets` of ``ds``.
        reference: the split whose statistics z-score regression targets (the training
            split); defaults to ``ds`` itself.

    Returns:
        ``{name: (N,) targets}``: int32 classes or float32 z-scored regression targets.

    Raises:
        ValueError: a name with no targets on this dataset.
    """
    avail = available_targets(ds.name, num_classes=ds.num_classes)
    out = {}
    for name in names:
        if name not in avail:
            raise ValueError(
                f"Task {name!r} has no labels on dataset {ds.name!r}; tasks with labels "
                f"there: {', '.join(avail) or 'none'}. Declare only those tasks."
            )
        y = _raw(name, ds)
        if avail[name].kind == "regression":
            ref = y if reference is None else _raw(name, reference)
            std = ref.std()
            y = ((y - ref.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
        out[name] = y
    return out
