"""Structured pruning: score whole units, mask them, and compact the model so it really shrinks.

A *unit group* is a set of units (Dense neurons or Conv output channels) that are removed
together: the producing kernels' output columns, their biases and norm entries, and the
consuming kernels' input rows. Models declare their groups themselves, so this module names
no model: a model that structured pruning can shrink has

- ``model.unit_groups()``: its groups, each with ``name``, ``size``, ``producers`` (params
  paths whose last axis indexes the units, or ``(path, axis)`` pairs: an attention head is
  axis 1 of a ``(hidden, heads, head_dim)`` query kernel), ``stats`` (batch_stats paths
  likewise) and ``consumers`` (kernel paths whose input axis -2 holds the units, possibly
  repeated over positions after a flatten: index ``p * size + unit``; or ``(path, axis)``
  pairs: the heads axis 0 of a ``(heads, head_dim, hidden)`` output projection); see
  ``jaxopt_ft.models.UnitGroup``;
- ``model.narrowed(sizes)``: the same model with group ``name`` ``sizes[name]`` units wide.

Masked model and compacted model agree because every removed unit outputs exactly zero in the
masked model (kernel column, bias and norm scale/bias masked; the activation keeps 0 at 0) and
its consumers' rows are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import tree
from jaxopt_ft.prune import allocate
from jaxopt_ft.prune import masks as masks_lib

PyTree = Any
# A unit group as a model declares it (jaxopt_ft.models.UnitGroup or any object with its
# attributes); this module reads name, size, producers, stats and consumers.
Group = Any
NORMS = ("l1", "l2")


class Compacted(NamedTuple):
    """Result of :func:`compact`: the narrower model and its variables.

    Attributes:
      model: the same class with narrower width fields.
      params: params with the removed units sliced out.
      batch_stats: BatchNorm statistics sliced likewise (None when none were given).
      kept: ``{group name: indices of the kept units}``.
    """

    model: nn.Module
    params: PyTree
    batch_stats: PyTree | None
    kept: dict[str, np.ndarray]


def _entry(e: str | tuple[str, int], default: int | None) -> tuple[str, int | None]:
    """``(path, axis)`` of a producer/consumer entry; a bare path gets ``default``."""
    return (e, default) if isinstance(e, str) else (e[0], int(e[1]))


def _broadcast(drop: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = drop.size
    return drop.reshape(shape)


def _by_unit(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``x`` as ``(-1, size)`` rows with the units axis last."""
    return np.moveaxis(x, axis, -1).reshape(-1, size)


def _declared(model: nn.Module, method: str) -> Any:
    fn = getattr(model, method, None)
    if not callable(fn):
        raise ValueError(
            f"{type(model).__name__} has no {method}() method: it declares no prunable unit "
            "groups, so structured pruning cannot shrink it. Fix: define unit_groups() and "
            "narrowed(sizes) on the model (see jaxopt_ft.models.UnitGroup), or prune it "
            "unstructured with prune.compute_masks."
        )
    return fn


def unit_groups(model: nn.Module, params: PyTree) -> list[Group]:
    """The prunable unit groups ``model`` declares, checked against ``params``.

    Raises:
      ValueError: the model declares no groups, or params that do not belong to it.
    """
    groups = list(_declared(model, "unit_groups")())
    if not groups:
        raise ValueError(
            f"{type(model).__name__}.unit_groups() declares no groups, so structured pruning "
            "has nothing to remove. Fix: prune it unstructured with prune.compute_masks."
        )
    flat = tree.flatten(params)
    entries = [_entry(e, -1)[0] for g in groups for e in (*g.producers, *g.consumers)]
    missing = [p for p in entries if p not in flat]
    wrong = [
        p
        for g in groups
        for p, ax in map(lambda e: _entry(e, -1), g.producers)
        if p in flat and np.shape(flat[p])[ax] != g.size
    ]
    if missing or wrong:
        raise ValueError(
            f"params do not belong to this {type(model).__name__}: missing paths {missing}, "
            f"paths whose last axis is not the model's width {wrong}. Fix: pass the params "
            "created by this model's init (variables['params'])."
        )
    return groups


def unit_scores(
    params: PyTree, groups: Sequence[Group], *, norm: str = "l2"
) -> dict[str, np.ndarray]:
    """Per-unit importance (numpy): the L1 or L2 norm of the units' producer-kernel slices.

    For a group spanning several kernels (the residual MLP) the norm runs over all of them.

    Raises:
      ValueError: unknown ``norm``.
    """
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; accepted: {list(NORMS)}. Fix: pass one.")
    flat = tree.flatten(params)
    out = {}
    for g in groups:
        kernels = [
            _by_unit(np.asarray(jax.device_get(flat[p])), ax, g.size)
            for p, ax in (_entry(e, -1) for e in g.producers)
            if p.endswith("kernel")
        ]
        stacked = np.concatenate(kernels).astype(np.float32)
        if norm == "l1":
            out[g.name] = np.sum(np.abs(stacked), axis=0)
        else:
            out[g.name] = np.sqrt(np.sum(stacked**2, axis=0))
    return out


def structured_masks(
    model: nn.Module,
    params: PyTree,
    *,
    sparsity: float | tree.Rules,
    norm: str = "l2",
) -> PyTree:
    """Masks that remove the lowest-norm units of every group (at least one unit is kept).

    A group of ``n`` units at sparsity ``s`` loses ``round(s * n)`` units (half to even) with
    the smallest norms, as ``torch.nn.utils.prune.ln_structured`` does along the output axis,
    except that one unit always stays (torch can remove them all; a model cannot).

    Args:
      model: a model that declares its unit groups (see the module docstring).
      params: its params.
      sparsity: fraction of units to remove in each group, or rules
        ``[(regex over group names, fraction)]`` (groups no rule covers stay whole).
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      Bool masks with ``params``' structure: removed units are False in their producers
      (kernel columns, biases, BatchNorm scale/bias) and in their consumers' input rows, so the
      masks' kept count equals the compacted model's parameter count.

    Raises:
      ValueError: a model without unit groups, bad sparsity or rules, unknown norm.
    """
    groups = unit_groups(model, params)
    names = {g.name: 0 for g in groups}
    if isinstance(sparsity, list | tuple):
        targets = tree.match_rules(names, sparsity, what="structured sparsity rules", default=0.0)
    else:
        targets = dict.fromkeys(names, sparsity)
    for name, s in targets.items():
        allocate.check_sparsity(s, what=f"sparsity of group {name!r}")
    scores = unit_scores(params, groups, norm=norm)
    removed = {}
    for g in groups:
        k = min(allocate.num_removed(float(targets[g.name]), g.size), g.size - 1)
        removed[g.name] = ~allocate._keep_top(scores[g.name], k, np)
    return _unit_masks(params, groups, removed)


def _unit_masks(params: PyTree, groups: Sequence[Group], removed: dict[str, Any]) -> PyTree:
    flat = tree.flatten(params)
    out = {p: np.ones(np.shape(x), bool) for p, x in flat.items()}
    for g in groups:
        drop = np.asarray(removed[g.name])
        for p, ax in (_entry(e, -1) for e in g.producers):
            out[p] = out[p] & ~_broadcast(drop, out[p].ndim, ax)
        for p, ax in (_entry(e, None) for e in g.consumers):
            if ax is not None:
                out[p] = out[p] & ~_broadcast(drop, out[p].ndim, ax)
                continue
            shape = out[p].shape
            rows = out[p].reshape(*shape[:-2], shape[-2] // g.size, g.size, shape[-1])
            out[p] = (rows & ~drop[:, None]).reshape(shape)
    return tree.unflatten_like(params, {p: jnp.asarray(m) for p, m in out.items()})


def _slice_last(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.take(x, keep, axis=-1)


def _slice_inputs(x: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    rows = x.reshape(*x.shape[:-2], x.shape[-2] // size, size, x.shape[-1])
    rows = np.take(rows, keep, axis=-2)
    return rows.reshape(*x.shape[:-2], -1, x.shape[-1])


def compact(
    model: nn.Module,
    params: PyTree,
    masks: PyTree,
    *,
    batch_stats: PyTree | None = None,
) -> Compacted:
    """Physically removes the units that ``masks`` switch off entirely.

    A unit is removed when every producer entry of it (kernel column, bias, BatchNorm
    scale and bias) is masked; its consumers' input rows go with it. Remaining masked
    entries are zeroed. The result computes the same function as
    ``model.apply(apply_masks(params, masks))`` (eval mode for BatchNorm models).

    Args:
      model: a model that declares its unit groups and how to narrow itself.
      params: its params.
      masks: masks for ``params`` (e.g. from :func:`structured_masks`).
      batch_stats: the model's BatchNorm statistics (required when a group has stats).

    Returns:
      A :class:`Compacted` with the narrower model, params, batch_stats and kept indices.

    Raises:
      ValueError: a model without unit groups, mismatched masks, missing batch_stats.
    """
    groups = unit_groups(model, params)
    masks_lib.check_masks(params, masks)
    if any(g.stats for g in groups) and batch_stats is None:
        raise ValueError(
            f"{type(model).__name__} has BatchNorm statistics that must shrink with the "
            "params. Fix: pass batch_stats=variables['batch_stats']."
        )
    masked = masks_lib.apply_masks(params, masks)
    p_flat = {p: np.asarray(jax.device_get(x)) for p, x in tree.flatten(masked).items()}
    m_flat = {p: np.asarray(jax.device_get(x)) for p, x in tree.flatten(masks).items()}
    s_flat = {}
    if batch_stats is not None:
        s_flat = {p: np.asarray(jax.device_get(x)) for p, x in tree.flatten(batch_stats).items()}
    narrowed = _declared(model, "narrowed")
    kept = {}
    for g in groups:
        alive = np.zeros(g.size, bool)
        for p, ax in (_entry(e, -1) for e in g.producers):
            alive |= _by_unit(m_flat[p], ax, g.size).any(axis=0)
        if not alive.any():
            alive[0] = True  # A layer of width 0 is not a model; keep one (all-zero) unit.
        keep = np.flatnonzero(alive)
        kept[g.name] = keep
        for p, ax in (_entry(e, -1) for e in g.producers):
            p_flat[p] = np.take(p_flat[p], keep, axis=ax)
        for p in g.stats:
            s_flat[p] = _slice_last(s_flat[p], keep)
        for p, ax in (_entry(e, None) for e in g.consumers):
            if ax is None:
                p_flat[p] = _slice_inputs(p_flat[p], keep, g.size)
            else:
                p_flat[p] = np.take(p_flat[p], keep, axis=ax)
    new_model = narrowed({name: int(keep.size) for name, keep in kept.items()})
    new_params = _nested_like(params, p_flat)
    new_stats = None if batch_stats is None else _nested_like(batch_stats, s_flat)
    return Compacted(new_model, new_params, new_stats, kept)


def _nested_like(like: PyTree, flat: dict[str, np.ndarray]) -> PyTree:
    leaves = [jnp.asarray(flat[p]) for p in tree.paths(like)]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def structured_sparsity(compacted: Compacted, params: PyTree) -> float:
    """Fraction of ``params``' entries that compaction removed."""
    before, after = tree.count_params(params), tree.count_params(compacted.params)
    return 0.0 if before == 0 else 1.0 - after / before
