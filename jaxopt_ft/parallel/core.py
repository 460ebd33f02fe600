"""The Strategy type, device placement helpers and the functions every mode shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
StepFn = Callable[..., tuple[Any, Any]]

MODES = ("none", "sharding", "pmap")
AXIS = "data"


class Strategy:
    """How a train step runs on devices: one subclass per mode, built by :func:`make`.

    Attributes:
      mode: One of :data:`MODES`.
      n_devices: Devices taking part (over all processes); the global batch divides by it.
      axis_name: ``"data"`` under ``pmap`` (for collectives inside a step), else None.
      mesh: The 1-D ``Mesh`` with axis ``"data"`` (None for mode ``none``).
      fsdp: Whether params and optimizer state are sharded (mode ``sharding`` only).
    """

    mode: str = ""
    axis_name: str | None = None

    def __init__(self, devices: list[Any], *, fsdp: bool = False):
        self.devices = devices
        self.n_devices = len(devices)
        self.mesh = Mesh(np.array(devices), (AXIS,)) if self.mode != "none" else None
        self.fsdp = fsdp

    def __repr__(self) -> str:
        return f"Strategy(mode={self.mode!r}, n_devices={self.n_devices}, fsdp={self.fsdp})"

    def prepare(self, state: PyTree) -> PyTree:
        """Places a plain state (host, one device or another layout) on the devices; idempotent."""
        raise NotImplementedError

    def step(self, fn: StepFn) -> StepFn:
        """Compiles ``fn``; ``compiled(device_state, batch, *args)`` takes the *global* batch
        (host arrays; each process slices its own rows), replicates ``args`` (keys) and returns
        ``(device_state, metrics)`` with metrics as scalars."""
        raise NotImplementedError

    def unwrap(self, state: PyTree) -> PyTree:
        """The checkpoint layout of a device state: no replica axis; arrays may still span
        several devices (orbax saves those collectively)."""
        return state

    def shard_batch(self, batch: PyTree, *, local: bool = False) -> PyTree:
        """Places a batch; ``local=True`` when it holds only this process's rows
        (:func:`~jaxopt_ft.parallel.process_slice`)."""
        del local
        return batch


def all_mean(tree: PyTree, axis_name: str | None) -> PyTree:
    """``lax.pmean`` of every leaf over ``axis_name``; the identity when it is None.

    For step functions that must agree across ``pmap`` replicas on something computed from
    per-device gradients before ``tx.update`` (PCGrad projections, GradNorm weights, a
    non-finite-gradient guard): ``grads = parallel.all_mean(grads, axis_name)`` first.
    """
    if axis_name is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.pmean(x, axis_name), tree)


def check_batch(batch_size: int, strategy: Strategy) -> None:
    """Raises ValueError unless the global ``batch_size`` divides by ``strategy.n_devices``."""
    n = strategy.n_devices
    if batch_size < 1 or batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(
            f"Global batch size {batch_size} does not divide by the {n} devices of parallel "
            f"mode {strategy.mode!r}. Fix: use a multiple of {n} (e.g. {lower} or {lower + n}), "
            "or fewer devices."
        )


def local(tree: PyTree) -> PyTree:
    """Every array leaf of ``tree`` as a full copy on this process's first device.

    For evaluation, reports and export after multi-device training: a state that spans
    devices (replicated, FSDP-sharded, or across processes) comes back as ordinary
    single-device arrays. Collective across processes when leaves are sharded over hosts.
    """
    device = jax.local_devices()[0]

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_replicated:
            for shard in x.addressable_shards:
                if shard.device == device:
                    return shard.data
            return jax.device_put(x.addressable_shards[0].data, device)
        if x.is_fully_addressable:
            return jax.device_put(x, device)
        return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)

    return jax.tree.map(one, tree)


def is_placed(x: Any, sharding: NamedSharding) -> bool:
    """Whether ``x`` is a jax.Array laid out as ``sharding`` already."""
    return (
        isinstance(x, jax.Array)
        and x.ndim >= len(sharding.spec)
        and x.sharding.is_equivalent_to(sharding, x.ndim)
    )


def place(x: Any, sharding: NamedSharding) -> jax.Array:
    """Puts one leaf at ``sharding`` (works across processes when ``x`` is the same on all)."""
    if is_placed(x, sharding):
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_tree(tree: PyTree, shardings: PyTree) -> PyTree:
    """:func:`place` over a tree and its matching tree of shardings."""
    return jax.tree.map(place, tree, shardings)


def replicator(mesh: Mesh) -> Callable[[tuple], tuple]:
    """Replicates a step's extra arguments (keys) on ``mesh``, reusing the last placement.

    ``fit`` passes the same key object every step; placing it once saves a transfer per step.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    last: list[Any] = [(), ()]

    def replicate(args: tuple) -> tuple:
        if len(args) == len(last[0]) and all(a is b for a, b in zip(args, last[0], strict=True)):
            return last[1]
        placed = tuple(jax.tree.map(lambda x: place(x, replicated), a) for a in args)
        last[0], last[1] = args, placed
        return placed

    return replicate


def batch_size(batch: PyTree) -> int:
    """The common leading dimension of a batch's arrays (ValueError when they disagree)."""
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"Every array of a batch needs the same leading batch dimension, got {sizes}. "
            "Fix: stack examples along axis 0 in every leaf."
        )
    return sizes.pop()


def bounded(run: StepFn, devices: list[Any], *, depth: int = 1) -> StepFn:
    """Limits a compiled step to ``depth`` unfinished calls behind the one just dispatched.

    On CPU, XLA runs the devices' collectives on a shared thread pool; with many steps queued
    by asynchronous dispatch, a device can block in an all-reduce whose peers never get a
    thread, and XLA aborts the process after 40 s (seen with 2 simulated devices on 2 cores).
    Waiting for step ``k - depth`` before returning step ``k`` keeps the host one step ahead
    and the pool free. Accelerators queue work on streams instead, so they are left alone.
    """
    if len(devices) == 1 or devices[0].platform != "cpu":
        return run
    pending: list[Any] = []

    def bounded_run(*args):
        out = run(*args)
        pending.append(out[1])
        if len(pending) > depth:
            jax.block_until_ready(pending.pop(0))
        return out

    return bounded_run
