"""Loading pretrained weights into a new model: copy what fits, re-initialise what rules name.

:func:`restore_variables` reads only ``params`` and ``batch_stats`` from an orbax checkpoint
written by :func:`jaxopt_ft.train.fit` (``workdir/checkpoints/<phase>``), with orbax's partial
restore, so neither the source model nor its optimizer needs to be rebuilt. :func:`transplant`
copies every leaf whose path and shape match into a freshly initialised tree, keeps the fresh
values of leaves named by ``dont_load`` rules (``["head/.*"]``), and refuses anything else: a
missing, unexpected or differently shaped path not covered by a rule is a ValueError listing
all of them at once.

Example:
    >>> fresh = model.init(key, x[:1])            # new head for the new classes
    >>> variables = load_pretrained(fresh, "runs/pre/checkpoints/pretrain", dont_load=["head/.*"])
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxopt_ft import tree as tree_lib

PyTree = Any
COLLECTIONS = ("params", "batch_stats")


def _manager_dir(directory: str, step: int | None) -> tuple[str, int | None]:
    """Accepts a manager directory or one of its step folders; returns (manager dir, step)."""
    base = os.path.basename(os.path.normpath(directory))
    if base.isdigit() and not any(n.isdigit() for n in os.listdir(directory)):
        parent = os.path.dirname(os.path.normpath(directory))
        if step is not None and step != int(base):
            raise ValueError(
                f"Checkpoint folder {directory!r} is step {base} but step={step} was asked; "
                "pass the checkpoints directory or drop step."
            )
        return parent, int(base)
    return directory, step


def restore_variables(directory: str | os.PathLike, *, step: int | None = None) -> dict:
    """Reads ``params`` and ``batch_stats`` from an orbax checkpoint of a training state.

    Args:
      directory: a checkpoints directory written by ``train.fit`` (holding step folders, e.g.
        ``workdir/checkpoints/pretrain``) or one step folder of it.
      step: the step to read; by default the latest one.

    Returns:
      ``{"params": tree, "batch_stats": tree}`` of numpy arrays (``batch_stats`` is ``{}`` for
      models without BatchNorm).

    Raises:
      ValueError: the directory does not exist, holds no checkpoint, lacks the asked step, or
        is not a checkpoint of a training state.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise ValueError(
            f"Pretrained checkpoint directory {directory!r} does not exist; pass a "
            "workdir/checkpoints/<phase> directory written by a previous run."
        )
    directory, step = _manager_dir(directory, step)
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise ValueError(
                f"{directory!r} holds no checkpoint; pass a workdir/checkpoints/<phase> "
                "directory written by a previous run."
            )
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"{directory!r} has no step {step}; it holds steps {steps}.")
        metadata = manager.item_metadata(step)
        tree = getattr(metadata, "tree", metadata)
        if not isinstance(tree, Mapping) or "params" not in tree:
            keys = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
            raise ValueError(
                f"Checkpoint {directory!r} step {step} is not a training state (top-level "
                f"keys {keys}, expected 'params'); pass a checkpoint written by train.fit."
            )
        wanted = {k: tree[k] for k in COLLECTIONS if k in tree}
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = manager.restore(
            step,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
    finally:
        manager.close()
    restored = dict(restored)
    restored.setdefault("batch_stats", {})
    logging.info("Restored params/batch_stats of step %d from %s.", step, directory)
    return restored


def _covered(paths: Sequence[str], dont_load: Sequence[str]) -> tuple[dict[str, bool], list]:
    """``{path: covered by a dont_load rule}`` and the indices of the rules that matched."""
    rules = [(rx, i) for i, rx in enumerate(dont_load)]
    flat = tree_lib.match_rules(
        {p: 0 for p in paths}, rules, what="dont_load rules", default=None, allow_unused=True
    )
    used = sorted({i for i in flat.values() if i is not None})
    return {p: i is not None for p, i in flat.items()}, used


def _check_dont_load(dont_load: Sequence[str]) -> list[str]:
    if isinstance(dont_load, str) or not all(isinstance(r, str) for r in dont_load):
        raise TypeError(
            f"dont_load must be a list of regexes, got {dont_load!r}; e.g. dont_load=['head/.*']."
        )
    for rx in dont_load:
        try:
            re.compile(rx)
        except re.error as e:
            raise ValueError(f"dont_load: invalid regex {rx!r} ({e}); fix the pattern.") from None
    return list(dont_load)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _transplant(target: PyTree, source: PyTree, covered: Mapping[str, bool], prefix: str):
    flat_t, flat_s = tree_lib.flatten(target), tree_lib.flatten(source)
    out, missing, unexpected, shapes = {}, [], [], []
    for path, leaf in flat_t.items():
        if covered[path]:
            out[path] = leaf
        elif path not in flat_s:
            missing.append(prefix + path)
        elif _shape(flat_s[path]) != _shape(leaf):
            shapes.append(
                f"{prefix}{path} (checkpoint {_shape(flat_s[path])}, model {_shape(leaf)})"
            )
        elif isinstance(flat_s[path], jax.ShapeDtypeStruct):
            out[path] = leaf  # an abstract source: a dry run that checks paths and shapes
        else:
            out[path] = jnp.asarray(flat_s[path], dtype=leaf.dtype)
    unexpected = [prefix + p for p in flat_s if p not in flat_t and not covered[p]]
    tree = tree_lib.unflatten_like(target, out) if not (missing or shapes) else None
    return tree, missing, unexpected, shapes


def _raise_mismatch(missing, unexpected, shapes, dont_load) -> None:
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint: {missing}")
    if unexpected:
        parts.append(f"in the checkpoint but not in the model: {unexpected}")
    if shapes:
        parts.append(f"different shapes: {shapes}")
    raise ValueError(
        "The pretrained weights do not fit this model (is it a checkpoint of another model?): "
        + "; ".join(parts)
        + f". dont_load rules {list(dont_load)} cover none of these paths. Load a checkpoint "
        "of the same architecture, or add dont_load rules (e.g. 'head/.*') for the parts to "
        "re-initialise."
    )


def transplant(target: PyTree, source: PyTree, *, dont_load: Sequence[str] = ()) -> PyTree:
    """Copies ``source`` leaves into ``target`` where path and shape match.

    Args:
      target: the freshly initialised tree of the new model (its values are kept for paths
        that ``dont_load`` covers).
      source: the pretrained tree (e.g. ``restore_variables(...)["params"]``). Abstract leaves
        (``jax.ShapeDtypeStruct``, from ``jax.eval_shape``) are checked but not copied, which
        validates a transplant before any weights exist.
      dont_load: regexes (``re.fullmatch`` on paths) of leaves to re-initialise; they may be
        missing from, or shaped differently in, ``source``.

    Returns:
      A tree with ``target``'s structure and dtypes.

    Raises:
      ValueError: a path not covered by ``dont_load`` is missing from ``source``, only in
        ``source``, or shaped differently (all such paths are listed); a rule matches nothing.
    """
    dont_load = _check_dont_load(dont_load)
    paths = list(dict.fromkeys(tree_lib.paths(target) + tree_lib.paths(source)))
    covered, used = _covered(paths, dont_load)
    _check_unused(dont_load, used, paths)
    tree, missing, unexpected, shapes = _transplant(target, source, covered, "")
    if missing or unexpected or shapes:
        _raise_mismatch(missing, unexpected, shapes, dont_load)
    return tree


def _check_unused(dont_load: Sequence[str], used: Sequence[int], paths: Sequence[str]) -> None:
    unused = [rx for i, rx in enumerate(dont_load) if i not in set(used)]
    if unused:
        raise ValueError(
            f"dont_load rules matching no parameter: {unused}. Paths: {list(paths)}. Fix or "
            "remove those rules."
        )


def load_pretrained(
    variables: Mapping[str, PyTree],
    source: str | os.PathLike | Mapping[str, PyTree],
    *,
    dont_load: Sequence[str] = (),
    step: int | None = None,
) -> dict[str, PyTree]:
    """Loads pretrained ``params`` and ``batch_stats`` into a new model's variables.

    Args:
      variables: the new model's freshly initialised ``{"params": ..., "batch_stats": ...}``
        (``batch_stats`` optional).
      source: a checkpoint directory (see :func:`restore_variables`) or a variables dict.
      dont_load: regexes of paths to re-initialise, matched within each collection (the
        ``head/.*`` rule covers ``params/head/kernel``). A rule must match some path of some
        collection, in the model or in the checkpoint.
      step: checkpoint step when ``source`` is a directory (default: the latest).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with the new model's structure.

    Raises:
      ValueError: the checkpoint cannot be read, does not fit the model (every missing,
        unexpected or differently shaped path is listed), or a ``dont_load`` rule is unused.
      TypeError: ``source`` or ``dont_load`` has the wrong type.
    """
    dont_load = _check_dont_load(dont_load)
    if isinstance(source, (str, os.PathLike)):
        source = restore_variables(source, step=step)
    if not isinstance(source, Mapping) or "params" not in source:
        raise TypeError(
            "source must be a checkpoint directory or a {'params': ..., 'batch_stats': ...} "
            f"dict, got {type(source).__name__}."
        )
    if "params" not in variables:
        raise TypeError(f"variables must have a 'params' collection, got {sorted(variables)}.")
    out, missing, unexpected, shapes, used, all_paths = {}, [], [], [], set(), []
    kept = 0
    for col in dict.fromkeys([*variables, *source]):
        if col not in COLLECTIONS and col not in variables:
            continue  # other collections of the source (none today) are not transferred
        target, src = variables.get(col, {}), source.get(col, {})
        paths = list(dict.fromkeys(tree_lib.paths(target) + tree_lib.paths(src)))
        all_paths += paths
        covered, col_used = _covered(paths, dont_load)
        used.update(col_used)
        kept += sum(covered.values())
        tree, m, u, s = _transplant(target, src, covered, f"{col}/")
        missing += m
        unexpected += u
        shapes += s
        if col in variables:
            out[col] = tree
    _check_unused(dont_load, sorted(used), all_paths)
    if missing or unexpected or shapes:
        _raise_mismatch(missing, unexpected, shapes, dont_load)
    logging.info("Loaded pretrained weights; %d paths re-initialised by dont_load.", kept)
    return out
