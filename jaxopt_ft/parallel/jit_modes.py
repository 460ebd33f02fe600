"""Modes ``none`` (plain ``jax.jit``) and ``sharding`` (``jax.jit`` over a 1-D device mesh)."""

from __future__ import annotations

from typing import Any

import jax
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
    is_placed,
    place_tree,
    replicator,
)
from jaxopt_ft.parallel.fsdp import fsdp_shardings, replicated_shardings


class NoneStrategy(Strategy):
    """One device: ``jax.jit`` with the state donated; the state lives on the default device.

    ``prepare`` moves every leaf there (host arrays too, so a checkpoint restored into the
    prepared state never falls back to the device layout of the run that saved it).
    """

    mode = "none"

    def prepare(self, state: PyTree) -> PyTree:
        return jax.device_put(state, self.devices[0])

    def step(self, fn: StepFn) -> StepFn:
        return jax.jit(fn, donate_argnums=0)


class ShardingStrategy(Strategy):
    """``jax.jit`` over ``Mesh(devices, ("data",))``: batch split, state replicated or FSDP.

    The batch mean in the loss becomes a cross-device all-reduce that XLA inserts; the step
    function is unchanged.
    """

    mode = "sharding"

    def __init__(self, devices: list[Any], *, fsdp: bool = False):
        super().__init__(devices, fsdp=fsdp)
        self._batch = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())

    def _shardings(self, tree: PyTree) -> PyTree:
        if self.fsdp:
            return fsdp_shardings(tree, self.mesh)
        return replicated_shardings(tree, self.mesh)

    def prepare(self, state: PyTree) -> PyTree:
        return place_tree(state, self._shardings(state))

    def shard_batch(self, batch: PyTree, *, local: bool = False) -> PyTree:
        if all(is_placed(x, self._batch) for x in jax.tree.leaves(batch)):
            return batch
        rows = batch_size(batch)
        global_rows = rows * jax.process_count() if local else rows
        check_batch(global_rows, self)
        if jax.process_count() == 1:
            return jax.device_put(batch, self._batch)
        part = batch if local else distributed.process_batch(batch)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(
                self._batch, np.asarray(x), (global_rows, *np.shape(x)[1:])
            ),
            part,
        )

    def step(self, fn: StepFn) -> StepFn:
        compiled: dict[Any, StepFn] = {}
        replicate = replicator(self.mesh)

        def run(state, batch, *args):
            treedef = jax.tree.structure(state)
            if treedef not in compiled:
                target = self._shardings(state)
                if not all(jax.tree.leaves(jax.tree.map(is_placed, state, target))):
                    raise ValueError(
                        "The state is not on the mesh of parallel mode 'sharding'. Fix: "
                        "state = strategy.prepare(state) before the first step."
                    )
                compiled[treedef] = jax.jit(
                    fn, donate_argnums=0, out_shardings=(target, self._replicated)
                )
            return compiled[treedef](state, self.shard_batch(batch), *replicate(args))

        return bounded(run, self.devices)
