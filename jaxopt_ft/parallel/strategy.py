"""Data-parallel strategies: one small class per mode, built by :func:`make`.

- ``none``: ``jax.jit`` with the state donated, one device.
- ``sharding``: ``jax.jit`` over ``Mesh(devices, ("data",))`` (Auto axes): the batch is split
  along the data axis, the state replicated (or FSDP-sharded), and XLA partitions the step. The
  batch mean in the loss becomes a cross-device all-reduce; the step function is unchanged.
- ``pmap``: ``jax.pmap`` with ``axis_name="data"``, the classic layout: the state carries a
  leading replica axis, each device runs the step on its slice of the batch, and the step
  averages its gradients with ``lax.pmean`` (`train.make_train_step(axis_name=...)` does; see
  the package docstring).

No mode uses ``jax.shard_map`` directly. Had it, note that under ``shard_map`` the gradient of a
*replicated* (unmapped) parameter arrives already summed over devices, so a further ``pmean``
would not be needed and a ``psum`` would count it T times; under ``pmap`` the state is mapped
(one copy per device), its gradients are per-device, and ``pmean`` is the right reduction.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax

from jaxopt_ft.parallel.core import MODES, Strategy
from jaxopt_ft.parallel.jit_modes import NoneStrategy, ShardingStrategy
from jaxopt_ft.parallel.pmap_mode import PmapStrategy


def _select_devices(devices: int | Sequence[Any] | None, mode: str) -> list[Any]:
    available = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if devices is None:
        return available
    if isinstance(devices, bool) or not isinstance(devices, int | Sequence):
        raise TypeError(f"devices must be None, an int or a list of jax devices, got {devices!r}.")
    if isinstance(devices, int):
        if devices < 1:
            raise ValueError(f"devices={devices} must be >= 1 (or None for all devices).")
        if devices > len(available):
            raise ValueError(
                f"Parallel mode {mode!r} asked for {devices} devices but only "
                f"{len(available)} exist ({available[0].platform}). Fix: use at most "
                f"{len(available)}, or on CPU simulate more with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}."
            )
        chosen = available[:devices]
    else:
        chosen = list(devices)
        unknown = [d for d in chosen if d not in available]
        if not chosen or unknown or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"devices={devices!r} must be a non-empty list of distinct devices from "
                f"jax.devices() ({len(available)} exist)."
            )
    if jax.process_count() > 1 and len(chosen) != len(available):
        raise ValueError(
            f"A multi-process run must use all {len(available)} devices, got {len(chosen)}. "
            "Fix: leave devices=None."
        )
    return chosen


def make(mode: str, *, devices: int | Sequence[Any] | None = None, fsdp: bool = False) -> Strategy:
    """Builds the :class:`Strategy` of ``mode``.

    Args:
      mode: ``"none"``, ``"sharding"`` or ``"pmap"``.
      devices: None for every device (of all processes), an int for the first that many, or
        a list of devices. Ignored by mode ``none``.
      fsdp: Shard params and optimizer state along the data axis (mode ``sharding`` only).

    Returns:
      The strategy. The same arguments give the same object, so repeated fits share compiled
      steps.

    Raises:
      ValueError: an unknown mode, more devices than exist, ``fsdp`` outside mode
        ``sharding``, or mode ``none`` in a multi-process run.

    Example:
      >>> strategy = make("sharding", fsdp=True)
      >>> state = strategy.prepare(state)
      >>> step = strategy.step(train.make_train_step())
      >>> state, metrics = step(state, batch, key)          # the global batch
      >>> plain = parallel.local(strategy.unwrap(state))   # for evaluation
    """
    if isinstance(mode, str) and isinstance(devices, int | None) and isinstance(fsdp, bool):
        return _make(mode, devices, fsdp)
    return _build(mode, devices, fsdp)


@functools.cache
def _make(mode: str, devices: int | None, fsdp: bool) -> Strategy:
    return _build(mode, devices, fsdp)


def _build(mode: str, devices: int | Sequence[Any] | None, fsdp: bool) -> Strategy:
    if mode not in MODES:
        raise ValueError(
            f"Unknown parallel mode {mode!r}; accepted: {', '.join(MODES)}. "
            "Fix: set parallel.mode to one of them."
        )
    if not isinstance(fsdp, bool):
        raise TypeError(f"fsdp must be a bool, got {fsdp!r}.")
    if fsdp and mode != "sharding":
        raise ValueError(
            f"fsdp=True needs parallel mode 'sharding', got {mode!r}. Fix: set "
            "parallel.mode='sharding' or parallel.fsdp=False."
        )
    if mode == "none":
        if jax.process_count() > 1:
            raise ValueError(
                f"Parallel mode 'none' in a run of {jax.process_count()} processes would "
                f"train {jax.process_count()} separate models. Fix: use 'sharding' or 'pmap'."
            )
        return NoneStrategy([jax.devices()[0]])
    chosen = _select_devices(devices, mode)
    if mode == "sharding":
        return ShardingStrategy(chosen, fsdp=fsdp)
    return PmapStrategy(chosen)
