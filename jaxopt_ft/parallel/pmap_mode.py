"""Mode ``pmap``: ``jax.pmap`` over the devices, the state stacked along a replica axis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxopt_ft.parallel import distributed
from jaxopt_ft.parallel.core import (
    AXIS,
    PyTree,
    StepFn,
    Strategy,
    batch_size,
    bounded,
    check_batch,
    local,
    replicator,
)


def _metric_mean(m: jax.Array) -> jax.Array:
    inexact = jnp.issubdtype(m.dtype, jnp.inexact)
    return jax.lax.pmean(m if inexact else m.astype(jnp.float32), AXIS)


class PmapStrategy(Strategy):
    """``jax.pmap`` over the devices with ``axis_name="data"``, the classic layout.

    The state carries a leading replica axis, each device runs the step on ``B / n`` examples,
    and the step averages what must agree across replicas itself: `train.make_train_step(
    axis_name=strategy.axis_name)` averages gradients (before ``tx.update``) and BatchNorm
    statistics with ``lax.pmean``. The strategy averages the metrics after the step.
    ``prepare`` stacks the state, ``unwrap`` takes replica 0.
    """

    mode = "pmap"
    axis_name = AXIS

    def __init__(self, devices: list[Any]):
        super().__init__(devices)
        self._stacked = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._mine = [d for d in devices if d.process_index == jax.process_index()]

    def _is_stacked(self, x: Any) -> bool:
        # pmap's outputs are global (n, ...) arrays in one process, but host-local
        # (local devices, ...) arrays over this process's devices in a multi-process run.
        return (
            isinstance(x, jax.Array)
            and isinstance(x.sharding, NamedSharding)
            and len(x.sharding.spec) >= 1
            and x.sharding.spec[0] == AXIS
            and x.shape[0] in (self.n_devices, len(self._mine))
        )

    def _stack(self, x: Any) -> jax.Array:
        if self._is_stacked(x):
            return x
        copies = {}
        if isinstance(x, jax.Array) and x.is_fully_replicated:
            copies = {s.device: s.data for s in x.addressable_shards}
        host = None
        arrays = []
        for d in self._mine:
            if d in copies:
                arrays.append(copies[d][None])
            else:
                if host is None:
                    host = np.asarray(jax.device_get(local(x)))
                arrays.append(jax.device_put(host[None], d))
        shape = (self.n_devices, *np.shape(x))
        return jax.make_array_from_single_device_arrays(shape, self._stacked, arrays)

    def _unstack(self, x: Any) -> Any:
        if not self._is_stacked(x):
            return x  # already unwrapped
        replicas = [s.data[0] for s in x.addressable_shards]
        return jax.make_array_from_single_device_arrays(x.shape[1:], self._replicated, replicas)

    def prepare(self, state: PyTree) -> PyTree:
        return jax.tree.map(self._stack, state)

    def unwrap(self, state: PyTree) -> PyTree:
        return jax.tree.map(self._unstack, state)

    def shard_batch(self, batch: PyTree, *, local: bool = False) -> PyTree:
        if all(self._is_stacked(x) for x in jax.tree.leaves(batch)):
            return batch
        rows = batch_size(batch)
        global_rows = rows * jax.process_count() if local else rows
        check_batch(global_rows, self)
        part = batch if local else distributed.process_batch(batch)
        per = global_rows // self.n_devices

        def put(x):
            x = np.asarray(x).reshape(len(self._mine), per, *np.shape(x)[1:])
            return jax.make_array_from_process_local_data(
                self._stacked, x, (self.n_devices, *x.shape[1:])
            )

        return jax.tree.map(put, part)

    def step(self, fn: StepFn) -> StepFn:
        compiled: dict[int, StepFn] = {}
        replicate = replicator(self.mesh)

        def per_device(state, batch, *args):
            state, metrics = fn(state, batch, *args)
            return state, jax.tree.map(_metric_mean, metrics)

        def run(state, batch, *args):
            if len(args) not in compiled:
                if not all(self._is_stacked(x) for x in jax.tree.leaves(state)):
                    raise ValueError(
                        "The state has no replica axis for parallel mode 'pmap'. Fix: "
                        "state = strategy.prepare(state) before the first step."
                    )
                compiled[len(args)] = jax.pmap(
                    per_device,
                    axis_name=AXIS,
                    in_axes=(0, 0) + (None,) * len(args),
                    out_axes=(0, None),
                    donate_argnums=0,
                    devices=self.devices,
                )
            return compiled[len(args)](state, self.shard_batch(batch), *replicate(args))

        return bounded(run, self.devices)
