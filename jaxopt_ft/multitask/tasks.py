"""Task declarations, the built-in tasks of the digit datasets, and per-task losses and metrics.

A task is declared by name with a kind (``classification`` with ``num_classes`` outputs, or
``regression`` with one output) and a loss. Targets for the built-in tasks are computed from a
`jaxopt_ft.data.Dataset`, never invented:

- ``digit``: the class label (10-way).
- ``parity``: ``label % 2`` (2-way).
- ``large``: ``label >= 5`` (2-way).
- ``slope`` (``mnist1d`` only): the least-squares slope of the signal against its position in
  [-0.5, 0.5]. The MNIST-1D generator tilts every signal by a random shear, so the slope mostly
  measures that nuisance variable: the digit explains about 2 % of its variance.
- ``ink`` (``digits`` only): the mean pixel intensity, i.e. the ink mass of the image.

Regression targets are z-scored with the training split's mean and standard deviation, so a
test MSE of 1.0 is what predicting the training mean scores, and ``1 - mse`` is roughly R².
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import data as data_lib
from jaxopt_ft import train

KINDS = ("classification", "regression")
LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "huber")}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_SPEC_KEYS = ("kind", "num_classes", "loss")
# Tasks derivable from any 10-class digit dataset; regression tasks per dataset.
_LABEL_TASKS = {"digit": 10, "parity": 2, "large": 2}
_REGRESSION_TASKS = {"mnist1d": ("slope",), "digits": ("ink",)}


class Task(NamedTuple):
    """One task of a multi-task model.

    Attributes:
        name: identifier used for the head (``heads/<name>``) and metric names.
        kind: ``"classification"`` or ``"regression"``.
        num_classes: output width: the number of classes, or 1 for regression.
        loss: ``"cross_entropy"`` (classification), ``"mse"`` or ``"huber"`` (regression).
    """

    name: str
    kind: str
    num_classes: int
    loss: str

    @property
    def metric(self) -> str:
        """The test metric reported for this task: ``<name>_accuracy`` or ``<name>_mse``."""
        return f"{self.name}_{'accuracy' if self.kind == 'classification' else 'mse'}"


def make_tasks(spec: Mapping[str, Mapping[str, Any]]) -> tuple[Task, ...]:
    """Validates task declarations and returns them as `Task` tuples, in declaration order.

    Args:
        spec: ``{name: {"kind": ..., "num_classes": ..., "loss": ...}}``; ``loss`` defaults to
            cross-entropy / MSE, ``num_classes`` is required for classification only.

    Returns:
        The tasks.

    Raises:
        ValueError: for no tasks, a bad name, an unknown key, kind or loss, or a missing or
            invalid ``num_classes``.

    Example:
        >>> make_tasks({"digit": {"kind": "classification", "num_classes": 10}})
        (Task(name='digit', kind='classification', num_classes=10, loss='cross_entropy'),)
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(
            f"tasks must be a non-empty mapping name -> {{kind, num_classes, loss}}, got {spec!r}."
        )
    tasks = []
    for name, decl in spec.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"Task name {name!r} is not accepted; use lower-case letters, digits and '_', "
                "starting with a letter (it names the head and the metrics)."
            )
        if not isinstance(decl, Mapping):
            raise ValueError(f"Task {name!r} must be declared as a mapping, got {decl!r}.")
        unknown = sorted(k for k in decl if k not in _SPEC_KEYS)
        if unknown:
            raise ValueError(
                f"Task {name!r} has unknown key(s) {unknown}; accepted: {', '.join(_SPEC_KEYS)}."
            )
        kind = decl.get("kind")
        if kind not in KINDS:
            raise ValueError(
                f"Task {name!r} has kind={kind!r}; accepted: {', '.join(KINDS)}. Set its kind."
            )
        loss = decl.get("loss") or DEFAULT_LOSS[kind]
        if loss not in LOSSES[kind]:
            raise ValueError(
                f"Task {name!r} ({kind}) has loss={loss!r}; accepted for {kind}: "
                f"{', '.join(LOSSES[kind])}."
            )
        n = decl.get("num_classes")
        if kind == "classification":
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
                raise ValueError(f"Classification task {name!r} needs num_classes >= 2, got {n!r}.")
        elif n not in (None, 0, 1):
            raise ValueError(
                f"Regression task {name!r} has one output; drop num_classes={n!r} from it."
            )
        tasks.append(Task(name, kind, int(n) if kind == "classification" else 1, loss))
    return tuple(tasks)


def available_tasks(dataset: str) -> dict[str, Task]:
    """The built-in tasks whose targets can be computed for ``dataset``, as declared by default."""
    out = {
        name: Task(name, "classification", n, "cross_entropy") for name, n in _LABEL_TASKS.items()
    }
    for name in _REGRESSION_TASKS.get(dataset, ()):
        out[name] = Task(name, "regression", 1, "mse")
    return out


def _raw_target(name: str, ds: data_lib.Dataset) -> np.ndarray:
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
    if name == "ink":
        return x.mean(1)
    raise AssertionError(name)  # unreachable: names are checked by the caller


def derive_targets(
    ds: data_lib.Dataset,
    tasks: tuple[Task, ...],
    *,
    reference: data_lib.Dataset | None = None,
) -> dict[str, np.ndarray]:
    """Computes every task's targets from ``ds``.

    Args:
        ds: the split to label.
        tasks: the declared tasks; each must be a built-in task of ``ds.name`` (see
            `available_tasks`) declared with the same kind and number of classes.
        reference: the split whose statistics z-score regression targets (the training
            split); defaults to ``ds`` itself.

    Returns:
        ``{name: (N,) targets}``: int32 classes or float32 z-scored regression targets.

    Raises:
        ValueError: for a task with no labels on this dataset, or one declared with another
            kind or class count than its targets have.
    """
    avail = available_tasks(ds.name)
    if ds.num_classes != 10:
        avail = {k: v for k, v in avail.items() if k not in _LABEL_TASKS}
    out = {}
    for task in tasks:
        if task.name not in avail:
            raise ValueError(
                f"Task {task.name!r} has no labels on dataset {ds.name!r}; tasks with labels "
                f"there: {', '.join(avail) or 'none'}. Declare only those tasks."
            )
        built = avail[task.name]
        if (built.kind, built.num_classes) != (task.kind, task.num_classes):
            raise ValueError(
                f"Task {task.name!r} is declared as {task.kind} with num_classes="
                f"{task.num_classes}, but its targets on {ds.name!r} are {built.kind} with "
                f"num_classes={built.num_classes}; fix the declaration."
            )
        y = _raw_target(task.name, ds)
        if task.kind == "regression":
            ref = y if reference is None else _raw_target(task.name, reference)
            std = ref.std()
            y = ((y - ref.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
        out[task.name] = y
    return out


def check_targets(targets: Mapping[str, Any], tasks: tuple[Task, ...]) -> None:
    """Raises ValueError when a declared task has no targets in ``targets``."""
    missing = [t.name for t in tasks if t.name not in targets]
    if missing:
        raise ValueError(
            f"Task(s) {missing} have no labels in the batch (its targets hold "
            f"{sorted(targets)}); add batch['targets'][name] for every declared task."
        )


def task_loss(task: Task, output: jax.Array, target: jax.Array) -> jax.Array:
    """Per-example loss (B,) of one task's head output against its targets."""
    if task.kind == "classification":
        return train.cross_entropy(output, target)
    target = target.astype(output.dtype)
    if task.loss == "huber":
        return optax.huber_loss(output, target, delta=1.0)
    return jnp.square(output - target)


def task_score(task: Task, output: jax.Array, target: jax.Array) -> jax.Array:
    """Per-example metric (B,): 1.0 for a correct class, or the squared error."""
    if task.kind == "classification":
        return (jnp.argmax(output, -1) == target).astype(jnp.float32)
    return jnp.square(output - target.astype(output.dtype)).astype(jnp.float32)
