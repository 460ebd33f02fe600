"""From scores to masks: exact counts per layer (uniform or ERK) or one global threshold.

Counting rule (torch.nn.utils.prune's ``_compute_nparams_toprune``): a scope of ``n`` weights
at sparsity ``s`` loses ``k = round(s * n)`` weights, Python's ``round`` of the float64 product
(half to even: 0.5 of 25 weights removes 12, 0.25 of 10 channels removes 2), the ``k`` lowest
scores. A scope is one leaf (``scope="layer"``, like ``l1_unstructured``), all prunable leaves
together (``scope="global"``, like ``global_unstructured``) or, for ERK, the total that the
per-layer counts share. Ties are broken deterministically by a stable sort: among equal scores
the lower flat index (leaf order, then row-major position) is pruned first.

Sparsity may be a Python float (counts computed exactly on the host, also inside ``jit``: the
sizes are static shapes) or a traced float32 scalar (counts rounded in float32, see
:func:`num_removed`; :func:`prune.wrap` computes the count of its final sparsity on the host).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import tree
from jaxopt_ft.prune import masks as masks_lib
from jaxopt_ft.prune import scores as scores_lib

PyTree = Any
Sparsity = float | jax.Array

SCOPES = ("layer", "global")
DISTRIBUTIONS = ("uniform", "erk")


def check_sparsity(sparsity: Any, *, what: str = "sparsity") -> float | None:
    """Validates a sparsity in ``[0, 1)``; returns it as a float, or None when traced.

    Raises:
      ValueError: ``sparsity`` is not a number in ``[0, 1)``.
    """
    if isinstance(sparsity, jax.core.Tracer):
        return None
    numeric = isinstance(sparsity, int | float | np.number | np.ndarray | jax.Array)
    s = math.nan
    if numeric and not isinstance(sparsity, bool) and np.size(sparsity) == 1:
        s = float(np.asarray(sparsity).reshape(()))
    if not 0.0 <= s < 1.0:
        raise ValueError(
            f"{what}={sparsity!r} must be a number in [0, 1): the fraction of prunable weights "
            "removed (0.9 keeps 10%). Fix: pass a value in [0, 1)."
        )
    return s


def check_scope(scope: Any, distribution: Any) -> None:
    """Raises ValueError for an unknown scope or distribution, or global scope with ERK."""
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; accepted: {list(SCOPES)}. Fix: pass one.")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown distribution {distribution!r}; accepted: {list(DISTRIBUTIONS)}. "
            "Fix: pass one."
        )
    if scope == "global" and distribution != "uniform":
        raise ValueError(
            f"scope='global' sets one threshold across layers, so distribution={distribution!r} "
            "has no effect there. Fix: use scope='layer' with distribution='erk', or "
            "scope='global' with distribution='uniform'."
        )


def num_removed(sparsity: Sparsity, n: int) -> int | jax.Array:
    """How many of ``n`` weights (or units) ``sparsity`` removes: ``round(sparsity * n)``.

    torch.nn.utils.prune's rule: the float64 product rounded by Python's ``round``, half to
    even (``num_removed(0.5, 25) == 12``, ``num_removed(0.25, 10) == 2``). A concrete sparsity
    gives that Python int. A traced sparsity is float32, so its count is the float32 product
    rounded half to even; where ``s * n`` lies within float32 precision of a half (0.15 of 190
    weights) it can differ from the Python count by one.
    """
    s = check_sparsity(sparsity)
    if s is not None:
        return min(n, round(s * n))
    k = jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)
    return jnp.minimum(k, n)


def _erk_raw(shape: Sequence[int]) -> float:
    # Erdős–Rényi-Kernel (Evci et al. 2020): density proportional to sum(dims) / prod(dims).
    return float(sum(shape)) / float(max(math.prod(shape), 1))


def _erk_densities(shapes: Sequence[Sequence[int]], kept_total: Any, xp: Any) -> Any:
    """Densities ``min(1, eps * raw_l)`` with ``sum_l d_l * n_l == kept_total`` (water-filling).

    With the layers sorted by ``raw`` descending, the answer caps the first ``j`` layers at 1
    for the smallest ``j`` whose uncapped ``eps`` keeps layer ``j`` at density <= 1.
    """
    raw = xp.asarray([_erk_raw(s) for s in shapes], dtype=xp.float32 if xp is jnp else None)
    n = xp.asarray([math.prod(s) for s in shapes], dtype=raw.dtype)
    order = xp.argsort(-raw, stable=True)
    raw_s, n_s = raw[order], n[order]
    capped_before = xp.cumsum(n_s) - n_s
    weight_after = xp.cumsum((raw_s * n_s)[::-1])[::-1]
    eps = (kept_total - capped_before) / weight_after
    valid = eps * raw_s <= 1.0 + 1e-6
    valid = xp.concatenate([valid[:-1], xp.ones((1,), dtype=bool)])
    j = xp.argmax(valid)
    idx = xp.arange(len(shapes))
    dens_s = xp.where(idx < j, 1.0, xp.minimum(1.0, eps[j] * raw_s))
    return dens_s[xp.argsort(order, stable=True)]


def _removed_counts(
    shapes: Sequence[Sequence[int]], sparsity: Sparsity, distribution: str
) -> list[Any]:
    """Weights to remove per layer: ``round(s * n_l)`` (uniform) or ERK with an exact total."""
    sizes = [math.prod(s) for s in shapes]
    if distribution == "uniform":
        return [num_removed(sparsity, n) for n in sizes]
    concrete = check_sparsity(sparsity) is not None
    xp = np if concrete else jnp
    total = sum(sizes)
    kept_total = total - num_removed(sparsity, total)
    dens = _erk_densities(shapes, kept_total, xp)
    n = xp.asarray(sizes)
    kept_f = dens * n
    kept = xp.minimum(xp.floor(kept_f), n)
    # Largest remainder: hand out the rounding slack to the largest fractional parts.
    slack = xp.clip(kept_total - kept.sum(), 0, len(sizes))
    rank = xp.argsort(xp.argsort(-(kept_f - kept), stable=True), stable=True)
    kept = xp.minimum(kept + (rank < slack), n)
    removed = n - kept
    if concrete:
        return [int(r) for r in removed]
    return [removed[i].astype(jnp.int32) for i in range(len(sizes))]


def _counts(
    shapes: Sequence[Sequence[int]], sparsity: Sparsity, *, scope: str, distribution: str
) -> list[Any]:
    """Weights to remove: one count per leaf (layer scope) or one for all leaves (global).

    Args:
      shapes: the prunable leaves' shapes, in leaf order.
      sparsity: fraction to remove, in ``[0, 1)``; may be traced (see :func:`num_removed`).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (layer scope).

    Returns:
      Python ints for a concrete sparsity, int32 scalars for a traced one.
    """
    if scope == "global":
        return [num_removed(sparsity, sum(math.prod(s) for s in shapes))]
    return _removed_counts(shapes, sparsity, distribution)


def layer_densities(
    params: PyTree,
    *,
    sparsity: float,
    distribution: str = "erk",
    prunable: PyTree | None = None,
) -> dict[str, float]:
    """Kept fraction per prunable leaf ``{path: density}`` after exact integer counts.

    For ``"erk"`` the densities follow ``sum(dims) / prod(dims)``, scaled so the prunable
    weights as a whole reach ``sparsity``, with layers that would exceed 1 capped at 1 and
    their share redistributed to the others.
    """
    check_sparsity(sparsity)
    check_scope("layer", distribution)
    prunable = masks_lib.select_prunable(params) if prunable is None else prunable
    flat = tree.flatten(params)
    names = masks_lib.prunable_paths(prunable)
    shapes = [np.shape(flat[p]) for p in names]
    removed = _counts(shapes, sparsity, scope="layer", distribution=distribution)
    return {
        p: 1.0 - r / max(math.prod(s), 1) for p, s, r in zip(names, shapes, removed, strict=True)
    }


def _on_host(values: list[Any]) -> bool:
    """True when nothing is traced: masks are then computed with numpy (no compilation)."""
    return not any(isinstance(x, jax.core.Tracer) for x in values)


def _rank(x: Any, xp: Any, axis: int = -1) -> Any:
    """Position of each entry in a stable ascending sort (ties: lower index ranks lower)."""
    return xp.argsort(xp.argsort(x, axis=axis, stable=True), axis=axis, stable=True)


def _keep_top(scores: Any, k: Any, xp: Any = jnp) -> Any:
    """Flat bool mask that drops the ``k`` lowest scores (stable: lower index first on ties)."""
    return _rank(scores, xp) >= k


def masks_from_scores(
    scores: PyTree,
    *,
    sparsity: Sparsity,
    prunable: PyTree,
    scope: str = "layer",
    distribution: str = "uniform",
) -> PyTree:
    """Masks that remove the lowest-scoring prunable weights; non-prunable leaves stay True.

    Args:
      scores: float pytree (higher = keep), the params' structure.
      sparsity: fraction of prunable weights to remove, in ``[0, 1)``; may be traced.
      prunable: bool pytree from :func:`select_prunable`.
      scope: ``"layer"`` (each prunable leaf loses ``round(s * n_leaf)``, like
        ``torch.nn.utils.prune.l1_unstructured`` per tensor) or ``"global"`` (one threshold:
        ``round(s * n_total)`` over all prunable leaves, like ``global_unstructured``).
      distribution: per-layer targets for ``scope="layer"``: ``"uniform"`` or ``"erk"``.

    Returns:
      A bool mask pytree with the scores' structure.
    """
    check_sparsity(sparsity)
    check_scope(scope, distribution)
    flat = tree.flatten(scores)
    shapes = [np.shape(flat[p]) for p in masks_lib.prunable_paths(prunable)]
    counts = _counts(shapes, sparsity, scope=scope, distribution=distribution)
    return _masks_from_counts(scores, counts, prunable=prunable, scope=scope)


def _masks_from_counts(
    scores: PyTree, counts: Sequence[Any], *, prunable: PyTree, scope: str
) -> PyTree:
    """Masks that drop the ``counts`` lowest prunable scores (see :func:`_counts`).

    Computed with numpy when nothing is traced (no compilation), else with jnp.
    """
    flat = tree.flatten(scores)
    names = masks_lib.prunable_paths(prunable)
    xp = np if _on_host([*flat.values(), *counts]) else jnp
    if xp is np:
        flat = {p: np.asarray(jax.device_get(x)) for p, x in flat.items()}
    out = {p: xp.ones(xp.shape(x), bool) for p, x in flat.items()}
    if scope == "layer":
        for p, k in zip(names, counts, strict=True):
            out[p] = _keep_top(xp.ravel(flat[p]), k, xp).reshape(xp.shape(flat[p]))
    else:
        sizes = [int(np.size(flat[p])) for p in names]
        allscores = xp.concatenate([xp.ravel(flat[p]).astype(xp.float32) for p in names])
        keep = _keep_top(allscores, counts[0], xp)
        offsets = np.cumsum([0, *sizes])
        for p, a, b in zip(names, offsets[:-1], offsets[1:], strict=True):
            out[p] = keep[a:b].reshape(xp.shape(flat[p]))
    return tree.unflatten_like(scores, {p: jnp.asarray(m) for p, m in out.items()})


def nm_masks(
    scores: PyTree,
    *,
    n: int,
    m: int,
    prunable: PyTree,
    axis: int | Mapping[str, int] = -2,
) -> PyTree:
    """N:M masks: in every group of ``m`` consecutive entries along ``axis`` keep the ``n`` best.

    The default ``axis=-2`` is the input axis of Dense ``(in, out)`` and Conv
    ``(..., in, out)`` kernels, so each output unit sees ``n`` of every ``m`` inputs (2:4 is
    the pattern sparse tensor cores accelerate). Ties drop the lower index first. Kernels whose
    contraction axis is elsewhere (attention's ``(heads, head_dim, hidden)`` output projection,
    an ``nn.Einsum``) take it per path: ``axis={p: ax[-1] for p, ax in
    ops.contraction_axes(ops.find_ops(model, variables, x)).items()}`` (paths not named: -2).

    Raises:
      ValueError: ``n``/``m`` not integers with ``1 <= n <= m``, a prunable leaf with fewer
        than 2 dims, or a leaf whose ``axis`` length is not a multiple of ``m``.
    """
    check_nm(n, m)
    flat = tree.flatten(scores)
    names = masks_lib.prunable_paths(prunable)
    axes = {p: axis.get(p, -2) if isinstance(axis, Mapping) else axis for p in names}
    bad = {
        p: tuple(np.shape(flat[p]))
        for p in names
        if np.ndim(flat[p]) < 2
        or not -np.ndim(flat[p]) <= axes[p] < np.ndim(flat[p])
        or np.shape(flat[p])[axes[p]] % m != 0
    }
    if bad:
        raise ValueError(
            f"{n}:{m} sparsity groups {m} consecutive entries along axis {axis}, so that axis "
            f"must exist and be a multiple of {m}; these prunable leaves {{path: shape}} do not "
            f"fit: {bad}. Fix: exclude them with prunable rules, or pick an m that divides it."
        )
    xp = np if _on_host(list(flat.values())) else jnp
    if xp is np:
        flat = {p: np.asarray(jax.device_get(x)) for p, x in flat.items()}
    out = {p: xp.ones(xp.shape(x), bool) for p, x in flat.items()}
    for p in names:
        x = xp.moveaxis(flat[p], axes[p], -1)
        groups = x.reshape(*x.shape[:-1], x.shape[-1] // m, m)
        keep = (_rank(groups, xp) >= m - n).reshape(x.shape)
        out[p] = xp.moveaxis(keep, -1, axes[p])
    return tree.unflatten_like(scores, {p: jnp.asarray(k) for p, k in out.items()})


def check_nm(n: Any, m: Any) -> None:
    """Raises ValueError unless ``n``, ``m`` are ints with ``1 <= n <= m``."""
    ints = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in (n, m))
    if not ints or not 1 <= n <= m:
        raise ValueError(
            f"N:M sparsity needs integers 1 <= N <= M (keep N of every M); got N={n!r}, "
            f"M={m!r}. Fix: pass e.g. n=2, m=4."
        )


def compute_masks(
    params: PyTree,
    *,
    sparsity: Sparsity | None = None,
    nm: tuple[int, int] | None = None,
    nm_axis: int | Mapping[str, int] = -2,
    scorer: Any = "magnitude",
    scope: str = "layer",
    distribution: str = "uniform",
    prunable: PyTree | None = None,
    grads: PyTree | None = None,
    key: jax.Array | None = None,
    masks: PyTree | None = None,
) -> PyTree:
    """One-shot masks for ``params``: score, then keep the best per scope (or N:M pattern).

    Args:
      params: the parameter pytree.
      sparsity: fraction of prunable weights to remove, in ``[0, 1)``.
      nm: ``(n, m)`` for N:M sparsity instead of ``sparsity`` (see :func:`nm_masks`).
      nm_axis: the axis N:M groups run along, one for all or ``{path: axis}`` (see
        :func:`nm_masks`; attention kernels: their contraction axis from ``jaxopt_ft.ops``).
      scorer: ``"magnitude"``, ``"random"`` (needs ``key``), ``"saliency"`` (needs ``grads``)
        or a callable ``(params, grads, key) -> scores``.
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (layer scope only).
      prunable: bool pytree from :func:`select_prunable`; default: kernels with ndim >= 2.
      grads: gradients for the saliency scorer.
      key: PRNG key for the random scorer.
      masks: current masks; weights they prune stay pruned (their scores become -inf), so
        masks only shrink as sparsity grows.

    Returns:
      A bool mask pytree with ``params``' structure.

    Raises:
      ValueError: neither or both of ``sparsity``/``nm``, or any invalid option.

    Example::

      masks = prune.compute_masks(params, sparsity=0.9, scope="global")
      params = prune.apply_masks(params, masks)
    """
    if (sparsity is None) == (nm is None):
        raise ValueError(
            f"Pass exactly one of sparsity (unstructured) or nm (N:M); got sparsity={sparsity!r}, "
            f"nm={nm!r}. Fix: e.g. sparsity=0.9 or nm=(2, 4)."
        )
    prunable = masks_lib.select_prunable(params) if prunable is None else prunable
    scores_lib.check_scorer(scorer)
    s = scores_lib.score(scorer, params, grads=grads, key=key)
    if nm is not None:
        n, m = _unpack_nm(nm)
        return nm_masks(s, n=n, m=m, prunable=prunable, axis=nm_axis)
    check_sparsity(sparsity)
    check_scope(scope, distribution)
    if masks is not None:
        masks_lib.check_masks(params, masks)
        m_flat = tree.flatten(masks)
        s = tree.map_with_path(lambda p, x: jnp.where(m_flat[p], x, -jnp.inf), s)
    return masks_from_scores(
        s, sparsity=sparsity, prunable=prunable, scope=scope, distribution=distribution
    )


def _unpack_nm(nm: Any) -> tuple[int, int]:
    if not (isinstance(nm, tuple | list) and len(nm) == 2):
        raise ValueError(f"nm={nm!r} must be a pair (n, m), e.g. nm=(2, 4). Fix: pass a pair.")
    check_nm(*nm)
    return int(nm[0]), int(nm[1])
