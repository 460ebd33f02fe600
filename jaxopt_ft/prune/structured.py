"""Structured pruning: score whole units, mask them, and compact the model so it really shrinks.

A *unit group* is a set of units (Dense neurons or Conv output channels) that are removed
together: the producing kernels' output columns, their biases and BatchNorm entries, and the
consuming kernels' input rows. Supported models and their groups:

- ``MLP`` (residual=False) and ``LeNet300``: each hidden Dense layer ``dense{i}``.
- ``MLP`` with ``residual=True``: one group ``hidden`` over all hidden layers, because the
  skip connections add them into one stream; a unit is removed from every layer at once.
- ``CNN1D`` and ``LeNet5``: each conv ``conv{i}`` and hidden Dense ``dense{i}``; the last conv
  feeds the Dense after the flatten, where channel ``c`` owns inputs ``p * C + c``.
- ``ResNet``: the inner channels of every block (``stage{s}_block{b}/conv1`` with ``bn1``,
  consumed by ``conv2``). Residual adds tie the stem, ``conv2`` and projection outputs of a
  stage together, so those stream channels are left alone.

Masked model and compacted model agree because every removed unit outputs exactly zero in the
masked model (kernel column, bias and BatchNorm scale/bias masked; ReLU and max-pool keep 0 at
0) and its consumers' rows are dropped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import models, tree
from jaxopt_ft.prune import allocate
from jaxopt_ft.prune import masks as masks_lib

PyTree = Any
NORMS = ("l1", "l2")
SUPPORTED = ("MLP", "LeNet300", "CNN1D", "LeNet5", "ResNet")


class UnitGroup(NamedTuple):
    """Units removed together, and where they live.

    Attributes:
      name: group name (``"conv2"``, ``"stage1_block1/conv1"``, ``"hidden"``).
      size: number of units.
      producers: params paths whose last axis indexes the units (kernels, biases, BN).
      stats: batch_stats paths whose last axis indexes the units (BN mean and var).
      consumers: params kernel paths whose input axis (-2) holds the units, possibly
        repeated over positions after a flatten (index ``p * size + unit``).
      field: the model field holding this group's width.
      index: position in that field's tuple, or None when the group sets every entry.
    """

    name: str
    size: int
    producers: tuple[str, ...]
    stats: tuple[str, ...]
    consumers: tuple[str, ...]
    field: str
    index: int | None


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


def _chain(names: list[str], widths: tuple[int, ...], field: str, last: str) -> list[UnitGroup]:
    """Groups for layers ``names`` that each feed the next one (the last feeds ``last``)."""
    groups = []
    for i, (name, width) in enumerate(zip(names, widths, strict=True)):
        consumer = names[i + 1] if i + 1 < len(names) else last
        groups.append(
            UnitGroup(
                name=name,
                size=width,
                producers=(f"{name}/kernel", f"{name}/bias"),
                stats=(),
                consumers=(f"{consumer}/kernel",),
                field=field,
                index=i,
            )
        )
    return groups


def _widths(model: nn.Module) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """The model's current width fields (after width_mult) and fixed overrides for clone."""
    if isinstance(model, models.MLP):
        return {"hidden": list(model.effective_hidden)}, {"width_mult": 1.0}
    if isinstance(model, models.LeNet300):
        return {"hidden": list(model.hidden)}, {}
    if isinstance(model, models.CNN1D):
        return {"channels": list(model.effective_channels)}, {"width_mult": 1.0}
    if isinstance(model, models.LeNet5):
        return {"channels": list(model.channels), "hidden": list(model.hidden)}, {}
    if isinstance(model, models.ResNet):
        inner = model.inner_widths
        if inner is None:
            inner = [
                w
                for w, b in zip(model.stage_widths, model.stage_blocks, strict=True)
                for _ in range(b)
            ]
        return {"inner_widths": list(inner)}, {}
    raise ValueError(
        f"Structured pruning does not support {type(model).__name__}; supported models: "
        f"{list(SUPPORTED)} (from jaxopt_ft.models). Fix: use one of them, or unstructured "
        "masks (prune.compute_masks) for this model."
    )


def unit_groups(model: nn.Module, params: PyTree) -> list[UnitGroup]:
    """The prunable unit groups of a supported ``jaxopt_ft.models`` model.

    Raises:
      ValueError: unsupported model, or params that do not belong to this model.
    """
    widths, _ = _widths(model)
    if isinstance(model, models.MLP | models.LeNet300):
        hidden = widths["hidden"]
        names = [f"dense{i + 1}" for i in range(len(hidden))]
        if isinstance(model, models.MLP) and model.residual and len(hidden) > 1:
            groups = [
                UnitGroup(
                    name="hidden",
                    size=hidden[0],
                    producers=tuple(f"{n}/{leaf}" for n in names for leaf in ("kernel", "bias")),
                    stats=(),
                    consumers=tuple(f"{n}/kernel" for n in [*names[1:], "head"]),
                    field="hidden",
                    index=None,
                )
            ]
        else:
            groups = _chain(names, tuple(hidden), "hidden", "head")
    elif isinstance(model, models.CNN1D):
        names = [f"conv{i + 1}" for i in range(len(widths["channels"]))]
        groups = _chain(names, tuple(widths["channels"]), "channels", "head")
    elif isinstance(model, models.LeNet5):
        convs = [f"conv{i + 1}" for i in range(len(widths["channels"]))]
        denses = [f"dense{i + 1}" for i in range(len(widths["hidden"]))]
        after_convs = denses[0] if denses else "head"
        groups = _chain(convs, tuple(widths["channels"]), "channels", after_convs)
        groups += _chain(denses, tuple(widths["hidden"]), "hidden", "head")
    else:
        blocks = [
            f"stage{s + 1}_block{b + 1}" for s, n in enumerate(model.stage_blocks) for b in range(n)
        ]
        groups = [
            UnitGroup(
                name=f"{blk}/conv1",
                size=w,
                producers=(f"{blk}/conv1/kernel", f"{blk}/bn1/scale", f"{blk}/bn1/bias"),
                stats=(f"{blk}/bn1/mean", f"{blk}/bn1/var"),
                consumers=(f"{blk}/conv2/kernel",),
                field="inner_widths",
                index=i,
            )
            for i, (blk, w) in enumerate(zip(blocks, widths["inner_widths"], strict=True))
        ]
    flat = tree.flatten(params)
    missing = [p for g in groups for p in (*g.producers, *g.consumers) if p not in flat]
    wrong = [
        p for g in groups for p in g.producers if p in flat and np.shape(flat[p])[-1] != g.size
    ]
    if missing or wrong:
        raise ValueError(
            f"params do not belong to this {type(model).__name__}: missing paths {missing}, "
            f"paths whose last axis is not the model's width {wrong}. Fix: pass the params "
            "created by this model's init (variables['params'])."
        )
    return groups


def unit_scores(
    params: PyTree, groups: list[UnitGroup], *, norm: str = "l2"
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
        kernels = [np.asarray(jax.device_get(flat[p])) for p in g.producers if p.endswith("kernel")]
        stacked = np.concatenate([k.reshape(-1, g.size) for k in kernels]).astype(np.float32)
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

    Args:
      model: a supported ``jaxopt_ft.models`` model (see module docstring).
      params: its params.
      sparsity: fraction of units to remove in each group, or rules
        ``[(regex over group names, fraction)]`` (groups no rule covers stay whole).
      norm: ``"l1"`` or ``"l2"``.

    Returns:
      Bool masks with ``params``' structure: removed units are False in their producers
      (kernel columns, biases, BatchNorm scale/bias) and in their consumers' input rows, so the
      masks' kept count equals the compacted model's parameter count.

    Raises:
      ValueError: unsupported model, bad sparsity or rules, unknown norm.
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


def _unit_masks(params: PyTree, groups: list[UnitGroup], removed: dict[str, Any]) -> PyTree:
    flat = tree.flatten(params)
    out = {p: np.ones(np.shape(x), bool) for p, x in flat.items()}
    for g in groups:
        drop = removed[g.name]
        for p in g.producers:
            out[p] = out[p] & ~drop
        for p in g.consumers:
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
      model: a supported ``jaxopt_ft.models`` model.
      params: its params.
      masks: masks for ``params`` (e.g. from :func:`structured_masks`).
      batch_stats: the model's BatchNorm statistics (required for ResNet).

    Returns:
      A :class:`Compacted` with the narrower model, params, batch_stats and kept indices.

    Raises:
      ValueError: unsupported model, mismatched masks, missing batch_stats.
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
    widths, overrides = _widths(model)
    kept = {}
    for g in groups:
        alive = np.zeros(g.size, bool)
        for p in g.producers:
            alive |= m_flat[p].reshape(-1, g.size).any(axis=0)
        if not alive.any():
            alive[0] = True  # A layer of width 0 is not a model; keep one (all-zero) unit.
        keep = np.flatnonzero(alive)
        kept[g.name] = keep
        for p in g.producers:
            p_flat[p] = _slice_last(p_flat[p], keep)
        for p in g.stats:
            s_flat[p] = _slice_last(s_flat[p], keep)
        for p in g.consumers:
            p_flat[p] = _slice_inputs(p_flat[p], keep, g.size)
        values = widths[g.field]
        for i in range(len(values)) if g.index is None else [g.index]:
            values[i] = int(keep.size)
    new_model = model.clone(**{f: tuple(v) for f, v in widths.items()}, **overrides)
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


def group_names(model: nn.Module, params: PyTree) -> list[str]:
    """Names of the model's unit groups (for ``structured_masks`` rules)."""
    return [g.name for g in unit_groups(model, params)]
