"""Freezing by rules: label trees, a partitioned optimizer, and a trainable-only train step.

Freezing is correct by construction rather than by convention:

- :func:`freeze_labels` turns ``[(regex, label), ...]`` into a label pytree (the shared
  :func:`jaxopt_ft.tree.label_tree`: first full match wins; uncovered leaves and unused rules
  are errors). The reserved label :data:`FROZEN` marks frozen leaves.
- :func:`optimizer` builds ``optax.multi_transform`` with ``optax.set_to_zero()`` for the frozen
  group, so frozen leaves carry no optimizer state and no weight decay, and each other label has
  its own transformation (per-group learning rates).
- ``train.make_train_step(trainable=trainable_mask(labels))`` differentiates only the trainable
  leaves: the frozen ones enter the loss as closed-over constants, so XLA never builds their
  gradients whatever else the optimizer chain reads (a global-norm clip, a gradient-norm
  metric), and they leave every step as the very same arrays (bit-identical, also under AdamW
  weight decay). A trunk whose BatchNorm layers are all frozen runs in inference mode, so its
  statistics do not move.

Example:
    >>> labels = freeze_labels(params, [("conv1/.*", FROZEN), ("head/.*", "head"), (".*", "trunk")])
    >>> tx = optimizer(labels, {"head": optax.adamw(1e-2), "trunk": optax.adamw(1e-3)})
    >>> state = train.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    >>> step = train.make_train_step(trainable=trainable_mask(labels))
    >>> state, summary = loop.fit(state, step, batches, steps=300, key=key)
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from typing import Any

import jax
import optax

from jaxopt_ft import tree as tree_lib

PyTree = Any
FROZEN = "frozen"


def freeze_labels(params: PyTree, rules: tree_lib.Rules) -> PyTree:
    """Resolves ``[(regex, label), ...]`` into a label pytree with ``params``' structure.

    Args:
      params: the parameter tree (only its paths are read).
      rules: ``(regex, label)`` pairs matched with ``re.fullmatch``, first match wins; labels
        are strings, :data:`FROZEN` marks frozen leaves.

    Returns:
      A pytree of label strings with ``params``' structure.

    Raises:
      ValueError: a rule matches no path or a path is covered by no rule (the message lists the
        paths and rules); a label is not a non-empty string.
    """
    for rule in rules:
        if isinstance(rule, (tuple, list)) and len(rule) == 2:
            if not isinstance(rule[1], str) or not rule[1]:
                raise ValueError(
                    f"freeze rules: labels must be non-empty strings, got {rule[1]!r} in rule "
                    f"{tuple(rule)!r}; use e.g. ({rule[0]!r}, {FROZEN!r})."
                )
    flat = tree_lib.match_rules(params, rules, what="freeze rules")
    counts = collections.Counter(flat.values())
    logging.info("freeze rules: %s", ", ".join(f"{k}: {v} leaves" for k, v in counts.items()))
    for path, label in flat.items():
        logging.debug("freeze rules: %s -> %s", path, label)
    return tree_lib.unflatten_like(params, flat)


def group_paths(labels: PyTree) -> dict[str, list[str]]:
    """Returns ``{label: [paths]}`` in leaf order."""
    out: dict[str, list[str]] = {}
    for path, label in tree_lib.flatten(labels).items():
        out.setdefault(label, []).append(path)
    return out


def count_groups(params: PyTree, labels: PyTree) -> dict[str, int]:
    """Returns the number of parameter scalars per label."""
    sizes = tree_lib.flatten(jax.tree.map(lambda x: int(x.size), params))
    out: dict[str, int] = {}
    for path, label in tree_lib.flatten(labels).items():
        out[label] = out.get(label, 0) + sizes[path]
    return out


def count_trainable(params: PyTree, labels: PyTree) -> tuple[int, int]:
    """Returns ``(trainable, frozen)`` parameter counts."""
    counts = count_groups(params, labels)
    frozen = counts.get(FROZEN, 0)
    return sum(counts.values()) - frozen, frozen


def optimizer(
    labels: PyTree, transforms: Mapping[str, optax.GradientTransformation]
) -> optax.GradientTransformation:
    """``optax.multi_transform`` over ``labels``, with ``set_to_zero`` for :data:`FROZEN`.

    Args:
      labels: a label pytree from :func:`freeze_labels`.
      transforms: one transformation per non-frozen label (e.g. AdamW with that group's learning
        rate). The frozen group must not be given one: it always gets ``optax.set_to_zero()``,
        which keeps no state and applies no weight decay.

    Returns:
      The partitioned transformation.

    Raises:
      ValueError: a label has no transformation, a transformation has no label, or
        :data:`FROZEN` is given a transformation.
    """
    groups = group_paths(labels)
    if FROZEN in transforms:
        raise ValueError(
            f"transforms has a key {FROZEN!r}, but frozen parameters always get "
            "optax.set_to_zero(); remove that key (or label those parameters otherwise)."
        )
    missing = {k: v for k, v in groups.items() if k != FROZEN and k not in transforms}
    if missing:
        shown = "; ".join(f"{k!r}: {v}" for k, v in missing.items())
        raise ValueError(
            f"Labels with no transformation: {shown}. Parameter labels: {sorted(groups)}. "
            f"Transforms keys: {sorted(transforms)}. Add a transformation (a learning rate) for "
            "each label, or change the freeze rules."
        )
    unused = sorted(k for k in transforms if k not in groups)
    if unused:
        raise ValueError(
            f"Transformations for labels no parameter carries: {unused}. Parameter labels: "
            f"{sorted(groups)}. Transforms keys: {sorted(transforms)}. Remove them or fix the "
            "freeze rules."
        )
    full = {k: transforms[k] for k in groups if k != FROZEN}
    if FROZEN in groups:
        full[FROZEN] = optax.set_to_zero()
    return optax.multi_transform(full, labels)


def trainable_mask(labels: PyTree) -> PyTree:
    """The bool tree for ``train.make_train_step(trainable=...)``: True where not frozen."""
    return jax.tree.map(lambda label: label != FROZEN, labels)


MODES = ("full", "partial", "linear_probe", "features", "lora", "scratch")


def mode_rules(
    mode: str, *, head: str = "head/.*", partial_frozen: tree_lib.Rules = ()
) -> list[tuple[str, str]]:
    """The freeze rules of a fine-tuning mode (labels ``head``, ``trunk``, ``lora``, frozen).

    Args:
      mode: ``full`` and ``scratch`` train everything (head and trunk as two groups);
        ``partial`` freezes ``partial_frozen`` and trains the rest; ``linear_probe`` and
        ``features`` train only the head; ``lora`` applies to ``{"base", "lora"}`` params and
        trains the adapters and the head.
      head: regex of the head's paths.
      partial_frozen: regexes frozen in ``partial`` mode, e.g. ``["conv1/.*"]``.

    Raises:
      ValueError: unknown mode, or ``partial`` without ``partial_frozen``.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown fine-tuning mode {mode!r}; accepted: {', '.join(MODES)}.")
    if mode in ("full", "scratch"):
        return [(head, "head"), (".*", "trunk")]
    if mode == "partial":
        if isinstance(partial_frozen, str) or not partial_frozen:
            raise ValueError(
                f"partial mode needs a non-empty list of regexes to freeze, got "
                f"{partial_frozen!r}; e.g. ['conv1/.*']."
            )
        return [(rx, FROZEN) for rx in partial_frozen] + [(head, "head"), (".*", "trunk")]
    if mode in ("linear_probe", "features"):
        return [(head, "head"), (".*", FROZEN)]
    return [(f"base/{head}", "head"), ("base/.*", FROZEN), ("lora/.*", "lora")]
