"""Paths and rules over parameter pytrees.

A leaf's *path* is its keys joined with ``/`` (``"conv1/kernel"``). Rules are lists of
``(regex, value)`` pairs matched with :func:`re.fullmatch` against paths; the first match wins.
Every module that selects parameters by name (pruning, freezing, quantization, weight decay)
goes through :func:`label_tree`, so "a rule that matches nothing" and "a leaf no rule covers"
are the same error everywhere.

The helpers work on any pytree whose key paths name its leaves: linen param dicts, NNX
``nnx.State`` objects, lists and tuples (indices become path components).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any
Rules = Sequence[tuple[str, Any]]


def _key_str(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(key_path: Sequence[Any]) -> str:
    """Joins a ``jax.tree_util`` key path into a ``/``-separated string."""
    return "/".join(_key_str(k) for k in key_path)


def flatten(tree: PyTree, *, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Returns ``{path: leaf}`` in the tree's leaf order.

    Args:
      tree: any pytree.
      is_leaf: as in ``jax.tree.leaves``: nodes for which it is True are leaves (e.g.
        ``quant.is_qarray`` keeps QArrays whole).
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {path_str(kp): leaf for kp, leaf in leaves}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Builds nested dicts from ``{path: leaf}``: the inverse of :func:`flatten` on dicts.

    Keys are split at ``/``; nested dicts keep ``flat``'s order. To rebuild another structure
    (lists, NNX states) use :func:`unflatten_like`.

    Args:
      flat: ``{path: leaf}``, e.g. from :func:`flatten`.

    Returns:
      Nested dicts with the leaves of ``flat``.

    Example:
      >>> unflatten({"conv1/kernel": 1, "conv1/bias": 2, "head": 3})
      {'conv1': {'kernel': 1, 'bias': 2}, 'head': 3}

    Raises:
      ValueError: a path is both a leaf and a prefix of another path (``"a"`` and ``"a/b"``).
    """
    for path in flat:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if (prefix := "/".join(parts[:i])) in flat:
                raise ValueError(
                    f"unflatten: {prefix!r} is a leaf and also the parent of {path!r}. Fix: "
                    "keep only one of the two paths."
                )
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        *parents, last = path.split("/")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return out


def paths(tree: PyTree) -> list[str]:
    """Returns the paths of the tree's leaves, in leaf order."""
    return list(flatten(tree))


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """Like ``jax.tree.map`` but ``fn`` receives the leaf's path string first."""
    return jax.tree_util.tree_map_with_path(lambda kp, x, *r: fn(path_str(kp), x, *r), tree, *rest)


def unflatten_like(tree: PyTree, flat: dict[str, Any]) -> PyTree:
    """Builds a tree with ``tree``'s structure from a ``{path: leaf}`` dict."""
    leaves = [flat[p] for p in paths(tree)]
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def _check_rules(rules: Rules, what: str) -> list[tuple[re.Pattern, Any]]:
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
        raise TypeError(f"{what} must be a list of (regex, value) pairs, got {rules!r}.")
    compiled = []
    for rule in rules:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise TypeError(f"{what}: each rule must be a (regex, value) pair, got {rule!r}.")
        try:
            compiled.append((re.compile(rule[0]), rule[1]))
        except re.error as e:
            raise ValueError(f"{what}: invalid regex {rule[0]!r} ({e}); fix the pattern.") from None
    return compiled


def match_rules(
    tree: PyTree,
    rules: Rules,
    *,
    what: str = "rules",
    default: Any = ...,
    allow_unused: bool = False,
) -> dict[str, Any]:
    """Resolves rules against every path of ``tree`` and returns ``{path: value}``.

    Args:
      tree: any pytree (only its key paths are used).
      rules: ``[(regex, value), ...]``; the first rule whose regex fully matches a path wins.
      what: a name for the rules used in error messages (e.g. ``"freeze rules"``).
      default: value for paths no rule covers. Without it an uncovered path is an error.
      allow_unused: if False, a rule that matches no path is an error.

    Raises:
      ValueError: a rule matches no path, or a path is covered by no rule (without a default).
    """
    compiled = _check_rules(rules, what)
    used = [False] * len(compiled)
    out: dict[str, Any] = {}
    uncovered = []
    for p in paths(tree):
        for i, (rx, value) in enumerate(compiled):
            if rx.fullmatch(p):
                out[p] = value
                used[i] = True
                break
        else:
            if default is ...:
                uncovered.append(p)
            else:
                out[p] = default
    if uncovered:
        raise ValueError(
            f"{what}: parameters covered by no rule: {uncovered}. Rules: "
            f"{[r[0] for r in rules]}. Add a rule such as ('.*', value) at the end."
        )
    unused = [rules[i][0] for i, u in enumerate(used) if not u]
    if unused and not allow_unused:
        raise ValueError(
            f"{what}: rules matching no parameter: {unused}. Parameter paths: {paths(tree)}. "
            "Fix or remove those rules."
        )
    for rx, value in compiled:
        logging.debug("%s: %r -> %r", what, rx.pattern, value)
    return out


def label_tree(
    tree: PyTree,
    rules: Rules,
    *,
    what: str = "rules",
    default: Any = ...,
    allow_unused: bool = False,
) -> PyTree:
    """Like :func:`match_rules` but returns a pytree of values with ``tree``'s structure."""
    flat = match_rules(tree, rules, what=what, default=default, allow_unused=allow_unused)
    return unflatten_like(tree, flat)


def count_params(tree: PyTree) -> int:
    """Total number of scalar entries over all array leaves."""
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def count_nonzero(tree: PyTree) -> int:
    """Number of non-zero entries over all array leaves."""
    return int(sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(tree)))


def tree_bytes(tree: PyTree) -> int:
    """Bytes the tree's array leaves occupy in memory (``size * itemsize``)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if hasattr(x, "dtype") and hasattr(x, "size"):
            total += int(x.size) * np.dtype(x.dtype).itemsize
    return total
