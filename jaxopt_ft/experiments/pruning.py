"""Shared by the pruning experiments (``compress``, ``sparsity_sweep``): context, phases, rows.

Turns the ``prune`` settings into plain arguments for ``jaxopt_ft.prune``, trains and prunes
through the shared phase helper (one resumable phase each), and measures deployed models the
same way for every row (see ``compress`` for the row definitions).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import data, prune, timing, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common

PyTree = Any
Forward = Callable[[PyTree, jax.Array], jax.Array]


def pruning_steps(p, steps: int) -> tuple[int, int]:
    """``(begin_step, end_step)`` of gradual pruning in a phase of ``steps`` updates.

    The wrapper's count is 0 at the first update, so ``end_step`` is at most ``steps - 1``:
    the last mask update, which reaches the final sparsity, must happen inside the phase.
    """
    end = min(int(round(p.end_fraction * steps)), steps - 1)
    begin = min(int(round(p.begin_fraction * steps)), end)
    return begin, end


def abstract_params(model: nn.Module, x: np.ndarray) -> PyTree:
    shape = jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), shape)["params"]


def prunable(p, model: nn.Module, params: PyTree) -> PyTree:
    """The prunable selection of ``prune.rules`` / ``exclude_first`` / ``exclude_last``.

    Raises:
      ValueError: a rule that matches nothing, or nothing left to prune (naming the keys).
    """
    try:
        return prune.select_prunable(
            params,
            list(p.rules) or None,
            exclude_first=p.exclude_first,
            exclude_last=p.exclude_last,
            layer_order=model.layer_order(),
        )
    except ValueError as e:
        raise ValueError(f"prune.rules / prune.exclude_first / prune.exclude_last: {e}") from None


def pruning_optimizer(
    s,
    model: nn.Module,
    params: PyTree,
    *,
    steps: int,
    key: jax.Array,
    sparsity: float,
    scorer: str,
    scope: str,
    distribution: str,
) -> optax.GradientTransformation:
    """``prune.wrap`` around the fine-tuning optimizer, gradual over the phase's ``steps``.

    Args:
      s: the settings (optimizer recipes and the ``prune`` schedule section).
      model: the dense model (its layer order).
      params: params or their shapes.
      steps: updates in the phase.
      key: PRNG key of the random scorer.
      sparsity: the fraction of prunable weights removed, counted as `torch.nn.utils.prune`
        does (``round(sparsity * n)``, half to even).
      scorer: ``"magnitude"``, ``"random"`` or ``"saliency"``.
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (layer scope).
    """
    p = s.prune
    begin, end = pruning_steps(p, steps)
    chosen = tree_lib.flatten(prunable(p, model, params))
    inner = common.build_optimizer(
        s, steps=steps, learning_rate=p.learning_rate, schedule=p.schedule
    )
    maskers = {
        "magnitude": lambda: prune.magnitude(scope=scope, distribution=distribution),
        "random": lambda: prune.random(key=key, scope=scope, distribution=distribution),
        "saliency": lambda: prune.saliency(scope=scope, distribution=distribution),
    }
    schedule = prune.polynomial(
        final_sparsity=sparsity, begin_step=begin, end_step=end, frequency=p.frequency
    )
    rules = [(re.escape(path), keep) for path, keep in chosen.items()]
    return prune.wrap(inner, schedule, maskers[scorer](), rules=rules)


class Context(NamedTuple):
    """What every phase and row shares.

    Attributes:
      s: the experiment's settings.
      workdir: run directory (checkpoints, exports, plots).
      progress: show progress bars.
      model: the dense model.
      train_ds: training split.
      test_ds: test split.
      keys: ``{"init", "dense", "prune", "scores", "structured"}`` PRNG keys from the seed.
      prunable: paths of the prunable weights in the dense model.
      prunable_params: how many weights those paths hold in the dense model.
      forward: the dense model's :func:`forward_of` (one object, so jit compiles it once).
      deployed: ``{row name: (forward, variables)}`` filled by :func:`row`, timed together by
        :func:`time_rows`.
    """

    s: Any
    workdir: str
    progress: bool
    model: nn.Module
    train_ds: data.Dataset
    test_ds: data.Dataset
    keys: dict[str, jax.Array]
    prunable: tuple[str, ...]
    prunable_params: int
    forward: Forward
    deployed: dict[str, tuple[Forward, PyTree]]


def make_context(s, workdir: str, *, progress: bool, prune_section: Any = None) -> Context:
    """Loads the data and builds the model; the prunable selection is that of
    ``prune_section`` (default ``s.prune``)."""
    train_ds = common.load_split(s, "train")
    test_ds = common.load_split(s, "test")
    model = common.build_model(s, num_classes=train_ds.num_classes)
    params = abstract_params(model, train_ds.x)
    section = s.prune if prune_section is None else prune_section
    chosen = tree_lib.flatten(prunable(section, model, params))
    paths = tuple(p for p, keep in chosen.items() if keep)
    flat = tree_lib.flatten(params)
    names = ("init", "dense", "prune", "scores", "structured")
    keys = dict(zip(names, jax.random.split(common.seed_key(s), len(names)), strict=True))
    return Context(
        s, workdir, progress, model, train_ds, test_ds, keys, paths,
        sum(int(np.size(flat[p])) for p in paths), forward_of(model), {},
    )  # fmt: skip


def forward_of(model: nn.Module) -> Forward:
    """``(variables, x) -> logits`` in inference mode."""
    return functools.partial(_apply, model.apply)


def _apply(apply_fn: Callable, variables: PyTree, x: jax.Array) -> jax.Array:
    return apply_fn(variables, x, train=False)


def predictions(ctx: Any, forward: Forward, variables: PyTree) -> np.ndarray:
    """Arg-max predictions of ``jax.jit(forward)`` on the whole test split."""
    fwd = jax.jit(forward)
    out = []
    for batch in data.eval_batches(ctx.test_ds, batch_size=ctx.s.eval.batch_size):
        pred = np.asarray(jnp.argmax(fwd(variables, batch["x"]), -1))
        out.append(pred[np.asarray(batch["mask"]) > 0])
    return np.concatenate(out)


def accuracy(ctx: Any, forward: Forward, variables: PyTree) -> float:
    """Test accuracy of ``forward`` over the whole test split."""
    return float(np.mean(predictions(ctx, forward, variables) == np.asarray(ctx.test_ds.label)))


def time_rows(ctx: Any, rows: list[dict[str, Any]]) -> None:
    """Sets ``step_ms`` of every row registered in ``ctx.deployed``, timed side by side.

    Each model's jitted forward pass runs on ``eval.batch_size`` test inputs, all models taking
    turns for ``eval.timing_repeats`` rounds (`jaxopt_ft.timing.time_side_by_side`), so every row
    sees the same machine load; ``step_ms`` is the median of a model's rounds.
    """
    n = min(ctx.s.eval.batch_size, len(ctx.test_ds.label))
    x = jax.device_put(jnp.asarray(ctx.test_ds.x[:n]))
    calls = {}
    for r in rows:
        if r["name"] in ctx.deployed:
            forward, variables = ctx.deployed[r["name"]]
            calls[r["name"]] = functools.partial(jax.jit(forward), variables, x)
    ms = timing.time_side_by_side(calls, repeats=ctx.s.eval.timing_repeats)
    for r in rows:
        if r["name"] in ms:
            r["step_ms"] = ms[r["name"]]


def counts(ctx: Context, params: PyTree) -> dict[str, Any]:
    """``params``, ``nonzero_params`` and ``sparsity`` over the dense model's prunable paths."""
    flat = tree_lib.flatten(params)
    kept = sum(int(np.count_nonzero(np.asarray(flat[p]))) for p in ctx.prunable if p in flat)
    return {
        "params": tree_lib.count_params(params),
        "nonzero_params": tree_lib.count_nonzero(params),
        "sparsity": 1.0 - kept / ctx.prunable_params,
    }


def row(
    ctx: Context,
    name: str,
    *,
    forward: Forward,
    variables: PyTree,
    params: PyTree,
    size_bytes: int,
    **extra: Any,
) -> dict[str, Any]:
    """One report row: accuracy of ``forward``, counts of ``params``, the size.

    ``forward`` and ``variables`` are kept in ``ctx.deployed`` for :func:`time_rows`, which
    fills ``step_ms`` once every row exists.
    """
    ctx.deployed[name] = (forward, variables)
    return {
        "name": name,
        "test_accuracy": accuracy(ctx, forward, variables),
        "step_ms": None,
        **counts(ctx, params),
        "size_bytes": int(size_bytes),
        **extra,
    }


def fit_phase(ctx: Context, state: train.TrainState, *, phase: str, steps: int, key: jax.Array):
    """A classification phase on the training split with the settings' batch and seed."""
    batches = common.train_batches(
        ctx.s, ctx.train_ds, batch_size=ctx.s.train.batch_size, seed=ctx.s.seed
    )
    return common.fit_phase(
        ctx.s, state, common.classification_step(ctx.s), batches, workdir=ctx.workdir,
        phase=phase, steps=steps, key=key, progress=ctx.progress,
    )  # fmt: skip


def dense_phase(ctx: Context) -> tuple[train.TrainState, dict]:
    """Trains (or restores) the dense model; returns its state and the ``dense`` row."""
    timer = common.Timer()
    steps = ctx.s.train.steps
    tx = common.build_optimizer(ctx.s, steps=steps)
    state = common.new_state(ctx.model, ctx.keys["init"], ctx.train_ds.x[:1], tx)
    state, _ = fit_phase(ctx, state, phase="dense", steps=steps, key=ctx.keys["dense"])
    out = row(
        ctx, "dense", forward=ctx.forward, variables=state.variables(),
        params=state.params, size_bytes=tree_lib.tree_bytes(state.params), wall_s=timer(),
    )  # fmt: skip
    return state, out


def prune_from(
    ctx: Context,
    dense: train.TrainState,
    *,
    phase: str,
    steps: int,
    key: jax.Array,
    **target: Any,
) -> tuple[train.TrainState, PyTree]:
    """Gradual pruning with fine-tuning from ``dense``; returns (finalized state, masks).

    ``target`` are ``sparsity``, ``scorer``, ``scope`` and ``distribution`` (see
    :func:`pruning_optimizer`); the phase's steps run from the dense weights, which stay usable.
    """
    tx = pruning_optimizer(
        ctx.s, ctx.model, dense.params, steps=steps, key=ctx.keys["scores"], **target
    )
    params = jax.tree.map(jnp.copy, dense.params)  # fit donates the state it trains
    state = train.TrainState.create(
        apply_fn=ctx.model.apply, params=params, tx=tx, batch_stats=dense.batch_stats
    )
    state, _ = fit_phase(ctx, state, phase=phase, steps=steps, key=key)
    masks = prune.find_masks(state.opt_state)
    return state.replace(params=prune.finalize(state.params, masks)), masks
