"""FSDP layout: every array sharded along the mesh's data axis on its largest divisible dimension.

Fully sharded data parallelism keeps one slice of each parameter (and of its optimizer moments)
on each device instead of a full copy. Under ``jax.jit`` nothing else changes: XLA inserts the
all-gathers before a parameter is used and reduce-scatters its gradient, so a train step written
for one device runs unchanged.

The rule is deliberately simple and deterministic: a leaf is split along the dimension with the
most elements among those divisible by the number of devices on the axis (ties go to the last
such dimension, e.g. the output features of a ``(d, d)`` kernel); a leaf with no divisible
dimension (scalars, a 10-class head bias on 8 devices) stays replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any


def fsdp_spec(shape: tuple[int, ...], num_shards: int, *, axis_name: str = "data") -> PartitionSpec:
    """The FSDP partition spec of one array of ``shape`` over ``num_shards`` devices.

    Args:
      shape: The array's shape.
      num_shards: Devices along ``axis_name``.
      axis_name: The mesh axis to shard over.

    Returns:
      ``PartitionSpec`` with ``axis_name`` at the chosen dimension, or ``PartitionSpec()``
      (replicated) when no dimension divides.

    Example:
      >>> fsdp_spec((3, 16, 10), 8)
      P(None, 'data', None)
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards!r}.")
    best = None
    for dim, size in enumerate(shape):
        if size >= num_shards and size % num_shards == 0:
            if best is None or size >= shape[best]:
                best = dim
    if best is None or num_shards == 1:
        return PartitionSpec()
    return PartitionSpec(*[axis_name if d == best else None for d in range(len(shape))])


def fsdp_shardings(tree: PyTree, mesh: Mesh, *, axis_name: str = "data") -> PyTree:
    """``NamedSharding`` for every array leaf of ``tree`` by the FSDP rule (:func:`fsdp_spec`).

    Args:
      tree: Any pytree of arrays (params, a whole ``TrainState``, abstract shapes).
      mesh: The device mesh; ``axis_name`` must be one of its axes.
      axis_name: The axis parameters are sharded along.

    Returns:
      A pytree of ``NamedSharding`` with ``tree``'s structure.

    Raises:
      ValueError: ``axis_name`` is not an axis of ``mesh``.
    """
    if axis_name not in mesh.shape:
        raise ValueError(
            f"axis_name={axis_name!r} is not an axis of the mesh (axes: {tuple(mesh.shape)}). "
            "Fix: pass one of those axis names."
        )
    n = mesh.shape[axis_name]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), n, axis_name=axis_name)), tree
    )


def replicated_shardings(tree: PyTree, mesh: Mesh) -> PyTree:
    """A fully replicated ``NamedSharding`` for every leaf of ``tree``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda _: sharding, tree)
