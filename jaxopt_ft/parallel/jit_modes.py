"""Modes ``none`` (plain ``jax.jit``) and ``sharding`` (``jax.jit`` over a 1-D device mesh)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def none_strategy() -> Strategy:
    """One device: ``jax.jit`` with the state donated; the state lives on the default device.

    ``prepare`` moves every leaf there (host arrays too, so a checkpoint restored into the
    prepared state never falls back to the device layout of the run that saved it).
    """
    device = jax.devices()[0]

    def step(fn: StepFn) -> StepFn:
        return jax.jit(fn, donate_argnums=0)

    def shard_batch(batch: PyTree, *, local: bool = False) -> PyTree:
        del local
        return batch

    def prepare(state: PyTree) -> PyTree:
        return jax.device_put(state, device)

    def identity(tree: PyTree) -> PyTree:
        return tree

    return Strategy("none", 1, None, None, prepare, step, identity, shard_batch)


def sharding_strategy(devices: list[Any], fsdp: bool) -> Strategy:
    """``jax.jit`` over ``Mesh(devices, ("data",))``: batch split, state replicated or FSDP."""
    mesh = Mesh(np.array(devices), (AXIS,))
    batch_sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    n = len(devices)

    def shardings(tree: PyTree) -> PyTree:
        return fsdp_shardings(tree, mesh) if fsdp else replicated_shardings(tree, mesh)

    def prepare(state: PyTree) -> PyTree:
        return place_tree(state, shardings(state))

    def shard_batch(batch: PyTree, *, local: bool = False) -> PyTree:
        leaves = jax.tree.leaves(batch)
        if all(is_placed(x, batch_sharding) for x in leaves):
            return batch
        rows = batch_size(batch)
        global_rows = rows * jax.process_count() if local else rows
        check_batch(global_rows, strategy)
        if jax.process_count() == 1:
            return jax.device_put(batch, batch_sharding)
        part = batch if local else distributed.process_batch(batch)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(
                batch_sharding, np.asarray(x), (global_rows, *np.shape(x)[1:])
            ),
            part,
        )

    def step(fn: StepFn) -> StepFn:
        compiled: dict[Any, StepFn] = {}
        replicate = replicator(mesh)

        def run(state, batch, *args):
            treedef = jax.tree.structure(state)
            if treedef not in compiled:
                target = shardings(state)
                if not all(jax.tree.leaves(jax.tree.map(is_placed, state, target))):
                    raise ValueError(
                        "The state is not on the mesh of parallel mode 'sharding'. Fix: "
                        "state = strategy.prepare(state) before the first step."
                    )
                compiled[treedef] = jax.jit(
                    fn, donate_argnums=0, out_shardings=(target, replicated)
                )
            return compiled[treedef](state, shard_batch(batch), *replicate(args))

        return bounded(run, devices)

    strategy = Strategy(
        "sharding", n, None, mesh, prepare, step, lambda s: s, shard_batch, fsdp=fsdp
    )
    return strategy
