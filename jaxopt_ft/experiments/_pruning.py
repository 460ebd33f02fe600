"""Shared by the pruning experiments (``compress``, ``sparsity_sweep``): settings, phases, rows.

Reads the ``prune`` section of a config into plain arguments for ``jaxopt_ft.prune``, trains
and prunes through ``train.fit`` (one resumable phase each), and measures deployed models the
same way for every row (see ``compress`` for the row definitions).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_ft import data, optim, prune, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import common
from jaxopt_ft.prune import allocate as prune_allocate
from jaxopt_ft.prune import scores as prune_scores

PyTree = Any
Forward = Callable[[PyTree, jax.Array], jax.Array]


def read_bool(config, key: str) -> bool:
    """``config[key]``, which must be True or False."""
    value = common.get(config, key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False, got {value!r}.")
    return value


def read_sparsity(config, key: str) -> float:
    """``config[key]`` as a sparsity in ``[0, 1)``; the error names ``key``."""
    return prune.check_sparsity(common.get(config, key), what=key)


def read_rules(config, key: str) -> list[tuple[str, Any]] | None:
    """``()`` -> None (the library default); else a list of ``(regex, value)`` pairs."""
    value = common.get(config, key)
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str) for r in value
    )
    if not ok:
        raise ValueError(
            f"{key} must be a list of (regex, value) pairs, got {value!r}; e.g. "
            "(('conv1/kernel', False), ('.*/kernel', True)), or () for the default."
        )
    return [(rx, v) for rx, v in value] or None


def pruning_settings(config, *, target: bool = True) -> dict[str, Any]:
    """Reads and checks the pruning keys of the ``prune`` section.

    Args:
      config: the experiment config.
      target: also read ``prune.sparsity``, ``prune.scorer``, ``prune.scope`` and
        ``prune.distribution`` (experiments that sweep them pass False).

    Raises:
      ValueError: a bad value, named with its key and the accepted values.
    """
    s = {
        "rules": read_rules(config, "prune.rules"),
        "exclude_first": read_bool(config, "prune.exclude_first"),
        "exclude_last": read_bool(config, "prune.exclude_last"),
        "steps": common.check_int(config, "prune.steps", minimum=1),
        "begin_fraction": common.check_float(
            config, "prune.begin_fraction", low=0.0, high=1.0, closed_low=True
        ),
        "end_fraction": common.check_float(
            config, "prune.end_fraction", low=0.0, high=1.0, closed_low=True
        ),
        "frequency": common.check_int(config, "prune.frequency", minimum=1),
        "learning_rate": common.check_float(config, "prune.learning_rate", low=0.0, high=100.0),
        "schedule": common.check_choice(config, "prune.schedule", optim.SCHEDULES),
    }
    if s["begin_fraction"] > s["end_fraction"]:
        raise ValueError(
            f"prune.begin_fraction={s['begin_fraction']} must not exceed "
            f"prune.end_fraction={s['end_fraction']}; pruning starts before it ends."
        )
    if target:
        s["sparsity"] = read_sparsity(config, "prune.sparsity")
        s["scorer"] = common.check_choice(config, "prune.scorer", prune_scores.SCORERS)
        s["scope"] = common.check_choice(config, "prune.scope", prune_allocate.SCOPES)
        s["distribution"] = common.check_choice(
            config, "prune.distribution", prune_allocate.DISTRIBUTIONS
        )
        try:
            prune_allocate.check_scope(s["scope"], s["distribution"])
        except ValueError as e:
            raise ValueError(f"prune.scope / prune.distribution: {e}") from None
    return s


def pruning_steps(s: dict, steps: int) -> tuple[int, int]:
    """``(begin_step, end_step)`` of gradual pruning in a phase of ``steps`` updates.

    The wrapper's count is 0 at the first update, so ``end_step`` is at most ``steps - 1``:
    the last mask update, which reaches the final sparsity, must happen inside the phase.
    """
    end = min(int(round(s["end_fraction"] * steps)), steps - 1)
    begin = min(int(round(s["begin_fraction"] * steps)), end)
    return begin, end


def optimizer(
    config, *, learning_rate: float, steps: int, schedule: str
) -> optax.GradientTransformation:
    """The config's optimizer (name and hyperparameters) with its own learning-rate schedule."""
    opt = common.get(config, "optimizer")
    extra = {
        k: opt[k] for k in ("momentum", "b1", "b2", "eps", "decay", "weight_decay") if k in opt
    }
    lr = optim.schedule(schedule, learning_rate=learning_rate, steps=steps)
    return optim.make(common.get(config, "optimizer.name"), learning_rate=lr, **extra)


def at_least(sparsity: float, sizes: list[int], *, scope: str, distribution: str) -> float:
    """The sparsity to ask the library for so that every scope loses ``ceil(sparsity * n)``.

    The library removes ``round(s * n)`` weights per scope: each layer for uniform layer
    scope, all prunable weights at once for global scope and ERK. Rounding down can leave a
    scope half a weight short of ``sparsity``; asking for ``max_n (ceil(sparsity * n) - 0.25)
    / n`` instead makes every scope remove at least ``ceil(sparsity * n)`` (exactly that for
    the scope that sets the maximum, and for the single global or ERK scope), the 0.25
    absorbing float32 rounding inside ``jit``.
    """
    if sparsity == 0.0:
        return 0.0
    scopes = sizes if scope == "layer" and distribution == "uniform" else [sum(sizes)]
    # round() first: 0.9 * 27760 is 24984.000000000004 in floating point, whose ceil is off.
    needed = [(math.ceil(round(sparsity * n, 6)) - 0.25) / n for n in scopes]
    return max(needed)


def check_prunable(s: dict[str, Any], params: PyTree) -> None:
    """Raises ValueError (naming the config keys) when the prunable rules select badly."""
    try:
        prune.select_prunable(
            params, s["rules"], exclude_first=s["exclude_first"], exclude_last=s["exclude_last"]
        )
    except ValueError as e:  # a rule that matches nothing, or nothing left to prune
        raise ValueError(f"prune.rules / prune.exclude_first / prune.exclude_last: {e}") from None


def pruning_optimizer(
    config,
    s: dict,
    params: PyTree,
    *,
    steps: int,
    key: jax.Array | None,
    sparsity: float,
    scorer: str,
    scope: str,
    distribution: str,
) -> optax.GradientTransformation:
    """``prune.wrap`` around the fine-tuning optimizer, gradual over the phase's ``steps``.

    Args:
      config: the experiment config (optimizer name and hyperparameters).
      s: :func:`pruning_settings` (schedule, rules, learning rate).
      params: params or their shapes; fix the prunable layer sizes for :func:`at_least`.
      steps: updates in the phase.
      key: PRNG key of the random scorer.
      sparsity: the sparsity every scope must reach at least.
      scorer: ``"magnitude"``, ``"random"`` or ``"saliency"``.
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (layer scope).
    """
    begin, end = pruning_steps(s, steps)
    chosen = prune.select_prunable(
        params, s["rules"], exclude_first=s["exclude_first"], exclude_last=s["exclude_last"]
    )
    flat = tree_lib.flatten(params)
    sizes = [int(np.size(flat[p])) for p in prune.prunable_paths(chosen)]
    inner = optimizer(config, learning_rate=s["learning_rate"], steps=steps, schedule=s["schedule"])
    return prune.wrap(
        inner,
        sparsity=at_least(sparsity, sizes, scope=scope, distribution=distribution),
        scorer=scorer,
        scope=scope,
        distribution=distribution,
        rules=s["rules"],
        exclude_first=s["exclude_first"],
        exclude_last=s["exclude_last"],
        begin_step=begin,
        end_step=end,
        frequency=s["frequency"],
        key=key if scorer == "random" else None,
    )


def target(s: dict) -> dict[str, Any]:
    """The ``sparsity``/``scorer``/``scope``/``distribution`` keywords from the settings."""
    return {k: s[k] for k in ("sparsity", "scorer", "scope", "distribution")}


def abstract_params(model: nn.Module, x: np.ndarray) -> PyTree:
    shape = jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), shape)["params"]


class Context(NamedTuple):
    """What every phase and row shares.

    Attributes:
      config: the experiment config.
      s: the checked ``prune`` settings (:func:`settings`).
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

    config: Any
    s: dict
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


def make_context(config, workdir: str, *, progress: bool, s: dict[str, Any]) -> Context:
    """Loads the data and builds the model; ``s`` are the experiment's checked settings."""
    train_ds = common.load_split(config, "train")
    test_ds = common.load_split(config, "test")
    model = common.build_model(config, num_classes=train_ds.num_classes)
    params = abstract_params(model, train_ds.x)
    chosen = prune.select_prunable(
        params, s["rules"], exclude_first=s["exclude_first"], exclude_last=s["exclude_last"]
    )
    paths = tuple(prune.prunable_paths(chosen))
    flat = tree_lib.flatten(params)
    names = ("init", "dense", "prune", "scores", "structured")
    keys = dict(zip(names, jax.random.split(common.seed_key(config), len(names)), strict=True))
    return Context(
        config, s, workdir, progress, model, train_ds, test_ds, keys, paths,
        sum(int(np.size(flat[p])) for p in paths), forward_of(model), {},
    )  # fmt: skip


def forward_of(model: nn.Module) -> Forward:
    """``(variables, x) -> logits`` in inference mode."""
    return lambda variables, x: model.apply(variables, x, train=False)


def accuracy(ctx: Context, forward: Forward, variables: PyTree) -> float:
    """Test accuracy of ``jax.jit(forward)`` over the whole test split."""
    fwd = jax.jit(forward)
    correct = count = 0.0
    for batch in common.eval_batches(ctx.config, ctx.test_ds):
        pred = np.asarray(jnp.argmax(fwd(variables, batch["x"]), -1))
        mask = np.asarray(batch["mask"])
        correct += float(np.sum((pred == np.asarray(batch["label"])) * mask))
        count += float(np.sum(mask))
    return correct / count


def time_rows(ctx: Context, rows: list[dict[str, Any]]) -> None:
    """Sets ``step_ms`` of every row that :func:`row` registered, timing them side by side.

    Each model's jitted forward pass runs once on ``eval.batch_size`` test inputs to compile,
    then all models take turns for ``eval.timing_repeats`` rounds, so every row sees the same
    machine load; ``step_ms`` is the median of a model's rounds, in milliseconds.
    """
    n = min(common.get(ctx.config, "eval.batch_size"), len(ctx.test_ds.label))
    x = jax.device_put(jnp.asarray(ctx.test_ds.x[:n]))
    names = [r["name"] for r in rows if r["name"] in ctx.deployed]
    calls = {}
    for name in names:
        forward, variables = ctx.deployed[name]
        fwd = jax.jit(forward)
        jax.block_until_ready(fwd(variables, x))
        calls[name] = functools.partial(fwd, variables, x)
    times = {name: [] for name in names}
    for _ in range(common.check_int(ctx.config, "eval.timing_repeats", minimum=1)):
        for name in names:
            t0 = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t0)
    for r in rows:
        if r["name"] in times:
            r["step_ms"] = 1000.0 * float(np.median(times[r["name"]]))


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

    Args:
      ctx: the shared context.
      name: the row's name.
      forward: ``(variables, x) -> logits`` of the deployed model.
      variables: what ``forward`` takes (e.g. ``{"params": ...}``).
      params: the deployed params, counted for ``params``/``nonzero_params``/``sparsity``.
      size_bytes: bytes of the deployable artifact.
      **extra: further columns.
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
    step_fn = train.make_train_step(
        label_smoothing=common.get(ctx.config, "train.label_smoothing", 0.0)
    )
    return common.fit(
        ctx.config, state, step_fn, ctx.train_ds, workdir=ctx.workdir, phase=phase,
        steps=steps, key=key, progress=ctx.progress,
    )  # fmt: skip


def dense_phase(ctx: Context) -> tuple[train.TrainState, dict]:
    """Trains (or restores) the dense model; returns its state and the ``dense`` row."""
    timer = common.Timer()
    params, batch_stats = train.init_model(ctx.model, ctx.keys["init"], ctx.train_ds.x[:1])
    steps = common.get(ctx.config, "train.steps")
    state = train.TrainState.create(
        apply_fn=ctx.model.apply,
        params=params,
        tx=common.build_optimizer(ctx.config, steps=steps),
        batch_stats=batch_stats,
    )
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
    **target_kw: Any,
) -> tuple[train.TrainState, PyTree]:
    """Gradual pruning with fine-tuning from ``dense``; returns (finalized state, masks).

    ``target_kw`` are ``sparsity``, ``scorer``, ``scope`` and ``distribution`` (see
    :func:`pruning_optimizer`); the phase's steps run from the dense weights, which stay usable.
    """
    tx = pruning_optimizer(
        ctx.config, ctx.s, dense.params, steps=steps, key=ctx.keys["scores"], **target_kw
    )
    params = jax.tree.map(jnp.copy, dense.params)  # fit donates the state it trains
    state = train.TrainState.create(
        apply_fn=ctx.model.apply, params=params, tx=tx, batch_stats=dense.batch_stats
    )
    state, _ = fit_phase(ctx, state, phase=phase, steps=steps, key=key)
    masks = prune.find_masks(state.opt_state)
    return state.replace(params=prune.finalize(state.params, masks)), masks
