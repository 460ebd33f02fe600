"""A shared trunk with one Dense head per task.

Any model of `jaxopt_ft.models` is a trunk: it is called with ``features_only=True`` and its
own ``head`` is never created. Parameters are ``{"trunk": …, "heads": {task: …}}``; BatchNorm
statistics, when the trunk has them, are ``batch_stats["trunk"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from jaxopt_ft.multitask.tasks import Task

PyTree = Any
# A zero (D,) vector that representation-gradient methods add to the trunk's output to
# differentiate the task losses with respect to the shared representation; never stored.
REP_OFFSET = "rep_offset"


class _Heads(nn.Module):
    tasks: tuple[Task, ...]

    @nn.compact
    def __call__(self, h: jax.Array) -> dict[str, jax.Array]:
        out = {}
        for task in self.tasks:
            # A soft-sharing trunk (`architectures`) gives each task its own features.
            y = nn.Dense(task.num_classes, name=task.name)(
                h[task.name] if isinstance(h, dict) else h
            )
            out[task.name] = y[:, 0] if task.kind == "regression" else y
        return out


class MultiTaskModel(nn.Module):
    """Shared trunk plus one head per task.

    Attributes:
        trunk: a model following the `jaxopt_ft.models` call convention
            (``__call__(x, *, train, features_only)``).
        tasks: the tasks; each gets a Dense head named after it.

    Example:
        >>> model = MultiTaskModel(models.get("cnn"), make_tasks(spec))
        >>> outputs = model.apply({"params": params}, x)   # {"digit": (B, 10), "slope": (B,)}
    """

    trunk: nn.Module
    tasks: tuple[Task, ...]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Returns ``{task: logits (B, C) or regression output (B,)}``."""
        h = self.trunk(x, train=train, features_only=True)
        if self.has_variable("params", REP_OFFSET):  # only representation-gradient steps
            offset = self.get_variable("params", REP_OFFSET)
            h = jax.tree.map(lambda f: f + offset, h)
        return _Heads(self.tasks, name="heads")(h)


def check_heads(params: Mapping[str, PyTree], tasks: tuple[Task, ...]) -> None:
    """Raises ValueError unless ``params`` has a trunk and exactly one head per task."""
    if not isinstance(params, Mapping) or "trunk" not in params or "heads" not in params:
        keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"Multi-task params must be {{'trunk': ..., 'heads': {{task: ...}}}}, got keys "
            f"{keys}; build them with MultiTaskModel(...).init."
        )
    heads = set(params["heads"])
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in heads]
    extra = sorted(heads - set(names))
    if missing or extra:
        raise ValueError(
            f"Declared tasks {names} and the model's heads {sorted(heads)} differ (no head "
            f"for {missing}, head without a task: {extra}); build the model with these tasks."
        )


def _ordered_kernels(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():  # insertion order = the order layers were created
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_ordered_kernels(value, path + "/"))
        elif key == "kernel":
            out.append(path)
    return out


def last_shared_layer(trunk_params: Mapping[str, Any]) -> str:
    """Path (relative to the trunk) of the kernel of the trunk's last layer.

    Flax records submodules in creation order, so the last ``kernel`` in the params' insertion
    order is the layer that feeds the heads (``conv3/kernel`` for the MNIST-1D CNN,
    ``dense2/kernel`` for LeNet-5). Use this on params straight from ``init``.

    Raises:
        ValueError: when the trunk has no kernel at all.
    """
    kernels = _ordered_kernels(trunk_params)
    if not kernels:
        raise ValueError(
            "The trunk has no 'kernel' parameter to serve as GradNorm's shared layer; pass "
            "shared_layer explicitly."
        )
    return kernels[-1]
