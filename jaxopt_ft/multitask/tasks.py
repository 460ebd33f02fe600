"""Task declarations and per-task losses and metrics.

A task is declared by name with a kind (``classification`` with ``num_classes`` outputs, or
``regression`` with one output) and a loss. Targets come with the batch
(``batch["targets"][name]``); `jaxopt_ft.data.derive_targets` computes auxiliary ones (parity,
slope, ink, ...) from the digit datasets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import train

KINDS = ("classification", "regression")
LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "huber")}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_SPEC_KEYS = ("kind", "num_classes", "loss")


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
