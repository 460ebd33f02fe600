"""Mode ``pmap``: ``jax.pmap`` over the devices, the state stacked along a replica axis."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxopt_ft.parallel import distributed
from jaxopt_ft.parallel.core import (
    AXIS,
    PyTree,
    StepFn,
    Strategy,
    all_mean,
    batch_size,
    bounded,
    check_batch,
    local,
    replicator,
)


def _replica_mean_tx(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` that first averages the incoming gradients over the pmap axis."""
    inner = optax.with_extra_args_support(tx)

    def update(updates, state, params=None, **extra_args):
        updates = jax.lax.pmean(updates, AXIS)
        return inner.update(updates, state, params, **extra_args)

    update.replica_mean_inner = tx  # read back by unwrap
    return optax.GradientTransformationExtraArgs(inner.init, update)


def _swap_tx(state: PyTree, averaged: bool) -> PyTree:
    tx = getattr(state, "tx", None)
    if not isinstance(tx, optax.GradientTransformation) or not hasattr(state, "replace"):
        return state  # e.g. a pair of optimizers: such a step must average its own gradients
    inner = getattr(tx.update, "replica_mean_inner", None)
    if averaged and inner is None:
        return state.replace(tx=_replica_mean_tx(tx))
    if not averaged and inner is not None:
        return state.replace(tx=inner)
    return state


def pmap_strategy(devices: list[Any]) -> Strategy:
    """``jax.pmap`` over ``devices``; prepare stacks the state, unwrap takes replica 0."""
    mesh = Mesh(np.array(devices), (AXIS,))
    stacked = NamedSharding(mesh, PartitionSpec(AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    n = len(devices)
    mine = [d for d in devices if d.process_index == jax.process_index()]

    def is_stacked(x: Any) -> bool:
        # pmap's outputs are global (n, ...) arrays in one process, but host-local
        # (local devices, ...) arrays over this process's devices in a multi-process run.
        return (
            isinstance(x, jax.Array)
            and isinstance(x.sharding, NamedSharding)
            and len(x.sharding.spec) >= 1
            and x.sharding.spec[0] == AXIS
            and x.shape[0] in (n, len(mine))
        )

    def stack(x: Any) -> jax.Array:
        if is_stacked(x):
            return x
        copies = {}
        if isinstance(x, jax.Array) and x.is_fully_replicated:
            copies = {s.device: s.data for s in x.addressable_shards}
        host = None
        arrays = []
        for d in mine:
            if d in copies:
                arrays.append(copies[d][None])
            else:
                if host is None:
                    host = np.asarray(jax.device_get(local(x)))
                arrays.append(jax.device_put(host[None], d))
        return jax.make_array_from_single_device_arrays((n, *np.shape(x)), stacked, arrays)

    def prepare(state: PyTree) -> PyTree:
        return jax.tree.map(stack, _swap_tx(state, averaged=True))

    def unstack(x: Any) -> Any:
        if not is_stacked(x):
            return x  # already unwrapped
        replicas = [s.data[0] for s in x.addressable_shards]
        return jax.make_array_from_single_device_arrays(x.shape[1:], replicated, replicas)

    def unwrap(state: PyTree) -> PyTree:
        return jax.tree.map(unstack, _swap_tx(state, averaged=False))

    def shard_batch(batch: PyTree, *, local: bool = False) -> PyTree:
        leaves = jax.tree.leaves(batch)
        if all(is_stacked(x) for x in leaves):
            return batch
        rows = batch_size(batch)
        global_rows = rows * jax.process_count() if local else rows
        check_batch(global_rows, strategy)
        part = batch if local else distributed.process_batch(batch)
        per = global_rows // n

        def put(x):
            x = np.asarray(x)
            x = x.reshape(len(mine), per, *x.shape[1:])
            return jax.make_array_from_process_local_data(stacked, x, (n, *x.shape[1:]))

        return jax.tree.map(put, part)

    def per_device_post(state: PyTree, metrics: PyTree) -> tuple[PyTree, PyTree]:
        if getattr(state, "batch_stats", None):
            state = state.replace(batch_stats=all_mean(state.batch_stats, AXIS))

        def mean(m):
            inexact = jnp.issubdtype(m.dtype, jnp.inexact)
            return jax.lax.pmean(m if inexact else m.astype(jnp.float32), AXIS)

        metrics = jax.tree.map(mean, metrics)
        return state, metrics

    def step(fn: StepFn) -> StepFn:
        compiled: dict[int, StepFn] = {}
        replicate = replicator(mesh)

        def per_device(state, batch, *args):
            return per_device_post(*fn(state, batch, *args))

        def run(state, batch, *args):
            if len(args) not in compiled:
                if not all(is_stacked(x) for x in jax.tree.leaves(state)):
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
                    devices=devices,
                )
            return compiled[len(args)](state, shard_batch(batch), *replicate(args))

        return bounded(run, devices)

    strategy = Strategy("pmap", n, AXIS, mesh, prepare, step, unwrap, shard_batch)
    return strategy
