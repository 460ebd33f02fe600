"""``prune.wrap(inner, schedule, masker)``: an optax wrapper that updates masks on a schedule
and keeps masked weights at zero.

The wrapper's state (:class:`PruneState`) holds the masks and a step counter next to the inner
optimizer's state, so checkpoints and shardings carry the masks with the rest of ``opt_state``.
Each update:

1. on a schedule step (``lax.cond``, static shapes) asks the masker for new masks from the
   current params and the incoming (dense) gradient: pruners never revive a weight, dynamic
   sparse training (SET, RigL) drops and regrows at a constant count per layer;
2. zeros the gradients of pruned weights before the inner optimizer sees them, so momentum
   and Adam moments do not build up there;
3. returns ``where(mask, inner_updates, -params)``, so ``optax.apply_updates`` leaves every
   pruned weight at exactly 0 (newly pruned weights are zeroed by that same update).

Put ``wrap`` last in a chain (or wrap the whole chain): a transform applied after it would
rescale the ``-params`` entries and break step 3. Transforms before it (clipping) are fine.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import tree
from jaxopt_ft.prune import maskers, schedules
from jaxopt_ft.prune import masks as masks_lib

PyTree = Any


class PruneState(NamedTuple):
    """State of :func:`wrap`.

    Attributes:
      count: number of updates applied so far (int32); the schedule's step.
      masks: bool pytree with the params' structure, True = keep.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    masks: PyTree
    inner_state: optax.OptState


def _is_placeholder(params: PyTree) -> bool:
    # optax.tree_utils.tree_map_params initializes with a leafless pytree node standing for
    # the params, to find the param-shaped parts of a state; the masks are one of them.
    return not jax.tree.leaves(params) and not isinstance(params, dict | list | tuple)


def _check_pair(schedule: Any, masker: Any) -> None:
    if schedule is not None and not isinstance(schedule, schedules.SparsitySchedule):
        raise TypeError(
            f"prune.wrap: schedule={schedule!r} is not a SparsitySchedule. Fix: pass "
            "prune.one_shot(...), prune.polynomial(...), prune.constant(...), "
            "prune.cosine(...) or None (masks never recomputed)."
        )
    if not isinstance(masker, maskers.Masker):
        raise TypeError(
            f"prune.wrap: masker={masker!r} is not a Masker. Fix: pass prune.magnitude(), "
            "prune.random(key=...), prune.saliency(), prune.nm(n, m), prune.fixed(...), "
            "prune.static(key=...), prune.set_(key=...) or prune.rigl(key=...)."
        )
    if masker.needs_fraction and (schedule is None or schedule.update_fraction is None):
        raise ValueError(
            "prune.wrap: dynamic sparse training (set_, rigl) drops and regrows a fraction of "
            "each layer per update, and this schedule gives none. Fix: pass "
            "prune.cosine(sparsity, fraction=0.3, frequency=100, end_step=...) or "
            "prune.constant(sparsity, fraction=0.3, frequency=100, end_step=...)."
        )
    if masker.needs_fraction and not 0.0 < schedule.final_sparsity:
        raise ValueError(
            "prune.wrap: dynamic sparse training needs a sparsity > 0 (nothing to regrow at "
            "0). Fix: pass e.g. prune.cosine(0.9, ...)."
        )


def wrap(
    inner: optax.GradientTransformation,
    schedule: schedules.SparsitySchedule | None,
    masker: maskers.Masker,
    *,
    rules: tree.Rules | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Prunes the params ``inner`` optimizes: ``schedule`` says when, ``masker`` says which.

    Examples::

      prune.wrap(tx, prune.polynomial(final_sparsity=0.9, begin_step=1000, end_step=5000),
                 prune.magnitude())                      # gradual (Zhu & Gupta)
      prune.wrap(tx, prune.one_shot(0.5), prune.nm(2, 4))   # N:M at the first update
      prune.wrap(tx, None, prune.fixed(ticket))           # fixed masks (lottery ticket)
      prune.wrap(tx, prune.constant(0.9), prune.static(key=k))   # static sparse from init
      prune.wrap(tx, prune.cosine(0.9, fraction=0.3, frequency=100, end_step=7500),
                 prune.rigl(key=k))                      # RigL; prune.set_ for SET

    Sparse-from-scratch maskers (``static``, ``set_``, ``rigl``) draw their masks at
    ``init``; zero the initial params with ``prune.apply_masks(params,
    prune.find_masks(opt_state))`` so the first forward is sparse too. On a dynamic sparse
    update step, weights that become active start at zero and their optimizer moments are
    reset (``optax.tree_utils.tree_map_params`` over ``inner``'s state).

    Args:
      inner: the optimizer to wrap (e.g. ``optax.adam(1e-3)`` or a whole chain).
      schedule: a :class:`SparsitySchedule`, or None when the masks never change.
      masker: a :class:`Masker` (``prune.magnitude()``, ``prune.rigl(key=...)``, ...).
      rules: prunable rules ``[(regex, bool)]``; default kernels with ndim >= 2. To keep the
        first or last layer dense pass the :func:`select_prunable` selection as exact rules.

    Returns:
      A GradientTransformation whose ``update`` requires ``params`` and whose state is a
      :class:`PruneState` (find it in any opt_state with :func:`find_masks`).

    Raises:
      TypeError: ``schedule`` or ``masker`` of the wrong type.
      ValueError: a dynamic sparse masker without an update fraction, rules matching no
        parameter (at ``init``), ``params=None`` (at ``update``).

    Longer than 80 lines: half is this docstring, the rest the ``init`` / ``update`` closures
    an optax transformation consists of, which share the resolved rules and the masker.
    """
    _check_pair(schedule, masker)
    inner = optax.with_extra_args_support(inner)
    final = 0.0 if schedule is None else schedule.final_sparsity

    def init_fn(params: PyTree) -> PruneState:
        count = jnp.zeros([], jnp.int32)
        if _is_placeholder(params):
            return PruneState(count=count, masks=params, inner_state=inner.init(params))
        prunable = masks_lib.select_prunable(params, rules)
        start = masker.init(params, prunable, final)
        return PruneState(count=count, masks=start, inner_state=inner.init(params))

    def recompute(params: PyTree, grads: PyTree, state: PruneState) -> tuple[PyTree, Any]:
        step = state.count
        x = maskers.MaskInputs(
            masks=state.masks,
            params=params,
            grads=grads,
            prunable=masks_lib.select_prunable(params, rules),
            sparsity=schedule.sparsity(step),
            final_sparsity=schedule.final_sparsity,
            fraction=None if schedule.update_fraction is None else schedule.update_fraction(step),
            key=None if masker.key is None else jax.random.fold_in(masker.key, step),
        )
        new = masker.update(x)
        if not masker.regrows:
            return new, state.inner_state
        grown = jax.tree.map(lambda n, o: n & ~o, new, state.masks)
        inner_state = optax.tree_utils.tree_map_params(
            inner,
            lambda v, g: jnp.where(g, jnp.zeros((), v.dtype), v),
            state.inner_state,
            grown,
            transform_non_params=lambda v: v,
        )
        return new, inner_state

    def update_fn(
        updates: PyTree, state: PruneState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, PruneState]:
        if params is None:
            raise ValueError(
                "prune.wrap needs the current params to score and zero pruned weights. "
                "Fix: call tx.update(grads, opt_state, params)."
            )
        masks_lib.check_masks(params, state.masks, what="pruning masks in opt_state")
        if schedule is None:
            new_masks, inner_state = state.masks, state.inner_state
        else:
            new_masks, inner_state = jax.lax.cond(
                schedule.is_update_step(state.count),
                lambda: recompute(params, updates, state),
                lambda: (state.masks, state.inner_state),
            )
        count = optax.safe_int32_increment(state.count)
        # Weights that just became active (dynamic sparse training) start at zero: no
        # gradient reaches the inner optimizer there on this step and their update is 0.
        moving = new_masks
        if masker.regrows:
            moving = jax.tree.map(lambda n, o: n & o, new_masks, state.masks)
        mv, nw, pf = tree.flatten(moving), tree.flatten(new_masks), tree.flatten(params)
        zero = lambda x: jnp.zeros((), x.dtype)
        grads = tree.map_with_path(lambda p, g: jnp.where(mv[p], g, zero(g)), updates)
        inner_updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
        out = tree.map_with_path(
            lambda p, u: jnp.where(mv[p], u, jnp.where(nw[p], zero(u), -pf[p].astype(u.dtype))),
            inner_updates,
        )
        return out, PruneState(count=count, masks=new_masks, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def replace_masks(opt_state: optax.OptState, masks: PyTree) -> optax.OptState:
    """``opt_state`` with the masks of its single :func:`wrap` state replaced by ``masks``.

    The masks are state, not part of the compiled step, so a new set (each lottery round)
    reuses the compiled train step.

    Raises:
      ValueError: no or several ``wrap`` states, or ``masks`` not matching the old masks.
    """
    old = find_masks(opt_state)
    masks_lib.check_masks(old, masks)
    new = jax.tree.map(lambda m: jnp.asarray(m, jnp.bool_), masks)
    new = tree.unflatten_like(old, tree.flatten(new))
    is_state = lambda x: isinstance(x, PruneState)
    swap = lambda x: x._replace(masks=new) if is_state(x) else x
    return jax.tree.map(swap, opt_state, is_leaf=is_state)


def find_states(opt_state: optax.OptState) -> list[PruneState]:
    """Every :class:`PruneState` inside ``opt_state`` (outermost ones), in tree order."""
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState))
    return [x for x in nodes if isinstance(x, PruneState)]


def find_masks(opt_state: optax.OptState) -> PyTree:
    """The masks of the single :func:`wrap` anywhere inside ``opt_state`` (chains included).

    Raises:
      ValueError: no ``wrap`` state, or more than one, is found.
    """
    found = find_states(opt_state)
    if len(found) != 1:
        raise ValueError(
            f"find_masks expects exactly one prune.wrap state in opt_state, found {len(found)} "
            f"(opt_state type: {type(opt_state).__name__}). Fix: build the optimizer with "
            "prune.wrap(...) once, or use prune.find_states(opt_state) to pick one."
        )
    return found[0].masks
