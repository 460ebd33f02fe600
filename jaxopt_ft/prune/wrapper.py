"""``prune.wrap``: an optax wrapper that prunes on a schedule and keeps pruned weights at zero.

The wrapper's state (:class:`PruneState`) holds the masks and a step counter next to the inner
optimizer's state, so checkpoints and shardings carry the masks with the rest of ``opt_state``.
Each update:

1. on a schedule step (``lax.cond``, static shapes) recomputes the masks from the current
   params (and the incoming gradient for saliency), never reviving a pruned weight;
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
from jaxopt_ft.prune import allocate, schedules
from jaxopt_ft.prune import masks as masks_lib
from jaxopt_ft.prune import scores as scores_lib

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


def _resolve_schedule(
    sparsity: Any,
    nm: Any,
    masks: Any,
    begin_step: int | None,
    end_step: int | None,
    frequency: int | None,
    initial_sparsity: float | None,
) -> schedules.SparsitySchedule | None:
    """Turns wrap's keyword arguments into a schedule (None = masks never change)."""
    if sparsity is not None and nm is not None:
        raise ValueError(
            f"prune.wrap: pass sparsity (unstructured) or nm (N:M), not both; got "
            f"sparsity={sparsity!r}, nm={nm!r}. Fix: drop one of them."
        )
    if isinstance(sparsity, schedules.SparsitySchedule):
        given = {
            "begin_step": begin_step,
            "end_step": end_step,
            "frequency": frequency,
            "initial_sparsity": initial_sparsity,
        }
        given = {k: v for k, v in given.items() if v is not None}
        if given:
            raise ValueError(
                f"prune.wrap: {given} would be ignored because sparsity is already a "
                "SparsitySchedule that fixes its own steps. Fix: set them in the schedule "
                "(prune.polynomial(...)) or pass sparsity as a float."
            )
        return sparsity
    begin = 0 if begin_step is None else begin_step
    if sparsity is None and nm is None:
        if masks is None:
            raise ValueError(
                "prune.wrap needs a target: sparsity=<float in [0, 1)> or a schedule "
                "(prune.polynomial(...)), nm=(n, m), or fixed masks=<bool pytree>. "
                "Fix: pass one of them."
            )
        return None
    if end_step is None:
        if frequency is not None or initial_sparsity is not None:
            raise ValueError(
                f"prune.wrap: frequency={frequency!r} / initial_sparsity={initial_sparsity!r} "
                "only apply to gradual pruning. Fix: also pass end_step=<last pruning step>, "
                "or drop them for one-shot pruning at begin_step."
            )
        if nm is not None:
            allocate._unpack_nm(nm)
            return schedules.SparsitySchedule(
                sparsity=lambda t: jnp.full((), 1.0 - nm[0] / nm[1], jnp.float32),
                is_update_step=schedules.update_steps(begin_step=begin, end_step=None),
                final_sparsity=1.0 - nm[0] / nm[1],
            )
        return schedules.one_shot(sparsity, step=begin)
    freq = 100 if frequency is None else frequency
    if nm is not None:
        allocate._unpack_nm(nm)
        return schedules.SparsitySchedule(
            sparsity=lambda t: jnp.full((), 1.0 - nm[0] / nm[1], jnp.float32),
            is_update_step=schedules.update_steps(
                begin_step=begin, end_step=end_step, frequency=freq
            ),
            final_sparsity=1.0 - nm[0] / nm[1],
        )
    return schedules.polynomial(
        final_sparsity=sparsity,
        begin_step=begin,
        end_step=end_step,
        frequency=freq,
        initial_sparsity=0.0 if initial_sparsity is None else initial_sparsity,
    )


def wrap(
    inner: optax.GradientTransformation,
    *,
    sparsity: float | schedules.SparsitySchedule | None = None,
    nm: tuple[int, int] | None = None,
    masks: PyTree | None = None,
    scorer: Any = "magnitude",
    scope: str = "layer",
    distribution: str = "uniform",
    rules: tree.Rules | None = None,
    begin_step: int | None = None,
    end_step: int | None = None,
    frequency: int | None = None,
    initial_sparsity: float | None = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Prunes the params ``inner`` optimizes, on a schedule, keeping pruned weights at 0.

    (Long because it resolves four mutually exclusive targets; the planned schedule x masker
    composition replaces it.) To keep the first or last layer dense, select with
    :func:`select_prunable` (``exclude_first=True, layer_order=model.layer_order()``) and pass
    that selection as ``rules`` (see the example below).

    Targets (pick one):

    - ``sparsity=0.9``: one-shot at ``begin_step`` (default 0); with ``end_step`` gradual
      polynomial pruning (Zhu & Gupta) from ``initial_sparsity`` (default 0) at
      ``begin_step`` to 0.9 at ``end_step``, masks recomputed every ``frequency`` steps
      (default 100) and at ``end_step``;
    - ``sparsity=prune.polynomial(...)`` or any :class:`SparsitySchedule`;
    - ``nm=(2, 4)``: N:M masks at ``begin_step`` (every ``frequency`` steps up to
      ``end_step`` when given);
    - ``masks=...`` alone: fixed masks (e.g. a lottery ticket); with a target they are the
      starting masks instead of all-True.

    Args:
      inner: the optimizer to wrap (e.g. ``optax.adam(1e-3)`` or a whole chain).
      sparsity: target sparsity or schedule, see above.
      nm: ``(n, m)`` for N:M sparsity along kernel input axes.
      masks: fixed or initial masks (bool pytree, the params' structure).
      scorer: ``"magnitude"``, ``"random"`` (needs ``key``), ``"saliency"`` (``|w * g|`` with
        the incoming updates as ``g``: put ``wrap`` where it sees raw gradients) or a
        callable ``(params, grads, key) -> scores``.
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (layer scope).
      rules: prunable rules ``[(regex, bool)]``; default kernels with ndim >= 2.
      begin_step: first pruning step (update count).
      end_step: last pruning step for gradual pruning.
      frequency: steps between mask updates.
      initial_sparsity: sparsity at ``begin_step`` for gradual pruning.
      key: PRNG key for the random scorer; step ``t`` uses ``fold_in(key, t)``.

    Returns:
      A GradientTransformation whose ``update`` requires ``params`` and whose state is a
      :class:`PruneState` (find it in any opt_state with :func:`find_masks`).

    Raises:
      ValueError: inconsistent or invalid options (at construction), rules matching no
        parameter or mismatched ``masks`` (at ``init``), ``params=None`` (at ``update``).

    Example::

      chosen = prune.select_prunable(params, exclude_first=True,
                                     layer_order=model.layer_order())
      rules = [(re.escape(p), v) for p, v in tree.flatten(chosen).items()]
      tx = prune.wrap(optax.adam(1e-3), sparsity=0.9, begin_step=1000, end_step=5000,
                      frequency=100, rules=rules)
      opt_state = tx.init(params)
      updates, opt_state = tx.update(grads, opt_state, params)
    """
    inner = optax.with_extra_args_support(inner)
    schedule = _resolve_schedule(
        sparsity, nm, masks, begin_step, end_step, frequency, initial_sparsity
    )
    scores_lib.check_scorer(scorer)
    allocate.check_scope(scope, distribution)
    if scorer == "random" and key is None and schedule is not None:
        raise ValueError(
            "prune.wrap(scorer='random') needs a key. Fix: pass key=jax.random.key(seed)."
        )
    nm_pair = None if nm is None else allocate._unpack_nm(nm)

    def prunable_of(params: PyTree) -> PyTree:
        return masks_lib.select_prunable(params, rules)

    def init_fn(params: PyTree) -> PruneState:
        count = jnp.zeros([], jnp.int32)
        if type(params).__name__ == "_ParamsPlaceholder":
            # optax.tree_utils.tree_map_params initializes with a placeholder to find the
            # param-shaped parts of the state; the masks are one of them.
            return PruneState(count=count, masks=params, inner_state=inner.init(params))
        prunable_of(params)
        if masks is None:
            start = masks_lib.dense_masks(params)
        else:
            masks_lib.check_masks(params, masks)
            flat = {p: jnp.asarray(m, jnp.bool_) for p, m in tree.flatten(masks).items()}
            start = tree.unflatten_like(params, flat)
        return PruneState(count=count, masks=start, inner_state=inner.init(params))

    def scheduled_masks(scores: PyTree, prunable: PyTree, step: jax.Array) -> PyTree:
        sparsity = schedule.sparsity(step)
        flat = tree.flatten(scores)
        shapes = [jnp.shape(flat[p]) for p in masks_lib.prunable_paths(prunable)]
        kw = {"scope": scope, "distribution": distribution}
        # The traced sparsity is float32, whose product with a size can round to the other
        # side of a half; at the final sparsity use the host's exact counts instead.
        final = allocate._counts(shapes, schedule.final_sparsity, **kw)
        now = allocate._counts(shapes, sparsity, **kw)
        at_final = sparsity == jnp.float32(schedule.final_sparsity)
        counts = [jnp.where(at_final, a, b) for a, b in zip(final, now, strict=True)]
        return allocate._masks_from_counts(scores, counts, prunable=prunable, scope=scope)

    def recompute(params: PyTree, grads: PyTree, state: PruneState) -> PyTree:
        prunable = prunable_of(params)
        step_key = None if key is None else jax.random.fold_in(key, state.count)
        s = scores_lib.score(scorer, params, grads=grads, key=step_key)
        old = tree.flatten(state.masks)
        if nm_pair is not None:
            new = allocate.nm_masks(s, n=nm_pair[0], m=nm_pair[1], prunable=prunable)
        else:
            # Pruned weights score -inf so masks only shrink while sparsity grows.
            s = tree.map_with_path(lambda p, x: jnp.where(old[p], x, -jnp.inf), s)
            new = scheduled_masks(s, prunable, state.count)
        new_flat = tree.flatten(new)
        chosen = set(masks_lib.prunable_paths(prunable))
        flat = {p: new_flat[p] if p in chosen else old[p] for p in old}
        return tree.unflatten_like(state.masks, flat)

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
            new_masks = state.masks
        else:
            new_masks = jax.lax.cond(
                schedule.is_update_step(state.count),
                lambda: recompute(params, updates, state),
                lambda: state.masks,
            )
        m_flat, p_flat = tree.flatten(new_masks), tree.flatten(params)
        grads = tree.map_with_path(
            lambda p, g: jnp.where(m_flat[p], g, jnp.zeros((), g.dtype)), updates
        )
        inner_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        out = tree.map_with_path(
            lambda p, u: jnp.where(m_flat[p], u, -p_flat[p].astype(u.dtype)), inner_updates
        )
        count = optax.safe_int32_increment(state.count)
        return out, PruneState(count=count, masks=new_masks, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
