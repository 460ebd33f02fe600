"""Maskers: how :func:`prune.wrap` chooses masks; the schedule says when and how many.

A :class:`Masker` is two pure functions. ``init(params, prunable, sparsity)`` gives the
masks training starts from (all-True for pruners that start dense, a random per-layer mask
for sparse-from-scratch training); ``update(inputs)`` gives the masks at an update step from
a :class:`MaskInputs` (current masks, params, the incoming gradients, the schedule's target
sparsity and update fraction, a step key). Updates run under ``jit`` with static shapes.

- ``magnitude``, ``random``, ``saliency``: prune the lowest scores to the scheduled
  sparsity; pruned weights stay pruned (their scores become ``-inf``).
- ``nm(n, m)``: N:M masks along kernel input axes.
- ``fixed(masks)``: given masks (or dense), never changed.
- ``static(key=...)``: a random mask (uniform or ERK) from initialisation, never changed.
- ``set_(key=...)`` (Mocanu et al. 2018) and ``rigl(key=...)`` (Evci et al. 2020): dynamic
  sparse training; see :func:`drop_and_grow`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_ft import tree
from jaxopt_ft.prune import allocate
from jaxopt_ft.prune import masks as masks_lib
from jaxopt_ft.prune import scores as scores_lib

PyTree = Any


class MaskInputs(NamedTuple):
    """What a masker's ``update`` sees at an update step (all arrays may be traced).

    Attributes:
      masks: the current masks.
      params: the current params.
      grads: the incoming (dense) gradients.
      prunable: bool pytree of Python bools, True = prunable.
      sparsity: the schedule's target sparsity now (float32 scalar).
      final_sparsity: the schedule's final sparsity (Python float, exact host counts).
      fraction: the schedule's update fraction now (float32 scalar), or None.
      key: this step's PRNG key (``fold_in(masker key, step)``), or None.
    """

    masks: PyTree
    params: PyTree
    grads: PyTree
    prunable: PyTree
    sparsity: jax.Array
    final_sparsity: float
    fraction: jax.Array | None
    key: jax.Array | None


class Masker(NamedTuple):
    """A mask policy for :func:`prune.wrap`.

    Attributes:
      init: ``(params, prunable, final_sparsity) -> masks`` at initialisation.
      update: ``MaskInputs -> masks`` at an update step.
      key: PRNG key whose ``fold_in(key, step)`` reaches ``update`` (None: not random).
      regrows: masks can regain weights (dynamic sparse training); the wrapper then starts
        regrown weights and their optimizer moments at zero.
      needs_fraction: the schedule must give an ``update_fraction``.
    """

    init: Callable[[PyTree, PyTree, float], PyTree]
    update: Callable[[MaskInputs], PyTree]
    key: jax.Array | None = None
    regrows: bool = False
    needs_fraction: bool = False


def _dense_init(params: PyTree, prunable: PyTree, sparsity: float) -> PyTree:
    del prunable, sparsity
    return masks_lib.dense_masks(params)


def _merge(old: PyTree, new: PyTree, prunable: PyTree) -> PyTree:
    """``new`` at the prunable leaves, ``old`` elsewhere."""
    o, n = tree.flatten(old), tree.flatten(new)
    chosen = set(masks_lib.prunable_paths(prunable))
    return tree.unflatten_like(old, {p: n[p] if p in chosen else o[p] for p in o})


def _scored(scorer: Any, *, scope: str, distribution: str, key: jax.Array | None) -> Masker:
    """Prunes the lowest scores to the scheduled sparsity; pruned weights stay pruned."""
    scores_lib.check_scorer(scorer)
    allocate.check_scope(scope, distribution)

    def update(x: MaskInputs) -> PyTree:
        s = scores_lib.score(scorer, x.params, grads=x.grads, key=x.key)
        old = tree.flatten(x.masks)
        s = tree.map_with_path(lambda p, v: jnp.where(old[p], v, -jnp.inf), s)
        shapes = [jnp.shape(tree.flatten(s)[p]) for p in masks_lib.prunable_paths(x.prunable)]
        kw = {"scope": scope, "distribution": distribution}
        # The traced sparsity is float32, whose product with a size can round to the other
        # side of a half; at the final sparsity use the host's exact counts instead.
        final = allocate._counts(shapes, x.final_sparsity, **kw)
        now = allocate._counts(shapes, x.sparsity, **kw)
        at_final = x.sparsity == jnp.float32(x.final_sparsity)
        counts = [jnp.where(at_final, a, b) for a, b in zip(final, now, strict=True)]
        new = allocate._masks_from_counts(s, counts, prunable=x.prunable, scope=scope)
        return _merge(x.masks, new, x.prunable)

    return Masker(init=_dense_init, update=update, key=key)


def magnitude(*, scope: str = "layer", distribution: str = "uniform") -> Masker:
    """Prunes the smallest ``|w|`` (per layer, uniform or ERK counts, or one global threshold).

    Raises:
      ValueError: an unknown scope or distribution.
    """
    return _scored("magnitude", scope=scope, distribution=distribution, key=None)


def random(*, key: jax.Array, scope: str = "layer", distribution: str = "uniform") -> Masker:
    """Prunes uniformly at random; update step ``t`` draws with ``fold_in(key, t)``."""
    _check_key(key, "random")
    return _scored("random", scope=scope, distribution=distribution, key=key)


def saliency(*, scope: str = "layer", distribution: str = "uniform") -> Masker:
    """Prunes the smallest SNIP saliency ``|w * g|`` (Lee et al. 2019), ``g`` the incoming
    gradients: put ``wrap`` where it sees raw gradients."""
    return _scored("saliency", scope=scope, distribution=distribution, key=None)


def nm(n: int, m: int) -> Masker:
    """N:M masks: ``n`` kept in every ``m`` consecutive kernel inputs, by magnitude.

    Raises:
      ValueError: ``n``, ``m`` not integers with ``1 <= n <= m``.
    """
    allocate.check_nm(n, m)

    def update(x: MaskInputs) -> PyTree:
        s = scores_lib.magnitude_scores(x.params)
        new = allocate.nm_masks(s, n=n, m=m, prunable=x.prunable)
        return _merge(x.masks, new, x.prunable)

    return Masker(init=_dense_init, update=update)


def fixed(masks: PyTree | None = None) -> Masker:
    """Masks that never change: ``masks`` (e.g. a lottery ticket) or dense until
    :func:`prune.replace_masks` puts a set into the optimizer state.

    Passing the masks through :func:`prune.replace_masks` instead of here keeps one compiled
    train step across lottery rounds.
    """

    def init(params: PyTree, prunable: PyTree, sparsity: float) -> PyTree:
        if masks is None:
            return masks_lib.dense_masks(params)
        masks_lib.check_masks(params, masks)
        flat = {p: jnp.asarray(v, jnp.bool_) for p, v in tree.flatten(masks).items()}
        return tree.unflatten_like(params, flat)

    return Masker(init=init, update=lambda x: x.masks)


def _check_key(key: Any, name: str) -> None:
    if key is None:
        raise ValueError(f"prune.{name} needs a key. Fix: pass key=jax.random.key(seed).")


def _random_init(key: jax.Array, distribution: str) -> Callable[..., PyTree]:
    """Random masks at the final sparsity (uniform or ERK per layer), each layer keeping >= 1."""
    allocate.check_scope("layer", distribution)

    def init(params: PyTree, prunable: PyTree, sparsity: float) -> PyTree:
        dens = allocate.layer_densities(
            params, sparsity=sparsity, distribution=distribution, prunable=prunable
        )
        empty = {p: tuple(jnp.shape(tree.flatten(params)[p])) for p, d in dens.items() if d == 0}
        if empty:
            raise ValueError(
                f"sparse training at sparsity={sparsity} with distribution={distribution!r} "
                f"leaves these layers {{path: shape}} with no weight to drop or regrow: "
                f"{empty}. Fix: lower the sparsity, use distribution='erk', or exclude them "
                "with prunable rules."
            )
        return allocate.compute_masks(
            params,
            sparsity=sparsity,
            scorer="random",
            key=key,
            distribution=distribution,
            prunable=prunable,
        )

    return init


def static(*, key: jax.Array, distribution: str = "erk") -> Masker:
    """Static sparse training: a random mask from initialisation, kept for all of training."""
    _check_key(key, "static")
    return Masker(init=_random_init(key, distribution), update=lambda x: x.masks)


def drop_and_grow(
    mask: jax.Array, drop_score: jax.Array, grow_score: jax.Array, fraction: jax.Array
) -> jax.Array:
    """One layer's drop/regrow (Evci et al. 2020, Algorithm 1; Mocanu et al. 2018).

    ``k = floor(fraction * n_active)``; drop the ``k`` active weights with the lowest
    ``drop_score``, then grow the ``k`` highest ``grow_score`` among the weights not active
    after the drop (a just-dropped weight may come back). The active count is unchanged.
    Ties go to the lower flat index.
    """
    flat = mask.ravel()
    k = jnp.floor(fraction * jnp.sum(flat)).astype(jnp.int32)
    d = jnp.where(flat, drop_score.ravel().astype(jnp.float32), jnp.inf)
    kept = flat & (allocate._rank(d, jnp) >= k)
    g = jnp.where(kept, -jnp.inf, grow_score.ravel().astype(jnp.float32))
    grown = allocate._rank(-g, jnp) < k
    return (kept | grown).reshape(mask.shape)


def _dst(grow: Callable[[MaskInputs], PyTree], key: jax.Array, distribution: str) -> Masker:
    def update(x: MaskInputs) -> PyTree:
        m, w, g = tree.flatten(x.masks), tree.flatten(x.params), tree.flatten(grow(x))
        new = dict(m)
        for p in masks_lib.prunable_paths(x.prunable):
            new[p] = drop_and_grow(m[p], jnp.abs(w[p]), g[p], x.fraction)
        return tree.unflatten_like(x.masks, new)

    init = _random_init(key, distribution)
    return Masker(init=init, update=update, key=key, regrows=True, needs_fraction=True)


def set_(*, key: jax.Array, distribution: str = "erk") -> Masker:
    """SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with
    adaptive sparse connectivity"): drop the smallest ``|w|``, regrow at random.

    Starts from a random mask (``distribution``: ``"uniform"`` or ``"erk"``); pair it with a
    schedule that has an update fraction (:func:`prune.constant` with ``fraction``).
    """
    _check_key(key, "set_")
    grow = lambda x: scores_lib.random_scores(x.params, key=x.key)
    return _dst(grow, key, distribution)


def rigl(*, key: jax.Array, distribution: str = "erk") -> Masker:
    """RigL (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners"): drop the
    smallest ``|w|``, regrow the largest dense-gradient magnitudes ``|g|``; regrown weights
    start at zero. ``key`` draws the initial ERK (or uniform) mask; pair it with
    :func:`prune.cosine`.
    """
    _check_key(key, "rigl")

    def grow(x: MaskInputs) -> PyTree:
        return jax.tree.map(lambda g: jnp.abs(g).astype(jnp.float32), x.grads)

    return _dst(grow, key, distribution)
