"""Freezing by rules: label trees, a partitioned optimizer, and a trainable-only train step.

Freezing is correct by construction rather than by convention:

- :func:`freeze_labels` turns ``[(regex, label), ...]`` into a label pytree (the shared
  :func:`jaxopt_ft.tree.label_tree`: first full match wins; uncovered leaves and unused rules
  are errors). The reserved label :data:`FROZEN` marks frozen leaves.
- :func:`optimizer` builds ``optax.multi_transform`` with ``optax.set_to_zero()`` for the frozen
  group, so frozen leaves carry no optimizer state and no weight decay, and each other label has
  its own transformation (per-group learning rates).
- :func:`make_train_step` differentiates only the trainable leaves: the frozen ones enter the
  loss as closed-over constants, so XLA never builds their gradients whatever else the optimizer
  chain reads (a global-norm clip, a gradient-norm metric), and they leave every step as the very
  same arrays (bit-identical, also under AdamW weight decay). A trunk whose BatchNorm layers are
  all frozen runs in inference mode, so its statistics do not move.

Example:
    >>> labels = freeze_labels(params, [("conv1/.*", FROZEN), ("head/.*", "head"), (".*", "trunk")])
    >>> tx = optimizer(labels, {"head": optax.adamw(1e-2), "trunk": optax.adamw(1e-3)})
    >>> state = train.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    >>> state, summary = train.fit(state, make_train_step(labels), batches, steps=300, key=key)
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxopt_ft import train
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


def split(params: PyTree, labels: PyTree) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits ``params`` into flat ``{path: leaf}`` dicts ``(trainable, frozen)``."""
    flat_labels = tree_lib.flatten(labels)
    trainable, frozen = {}, {}
    for path, leaf in tree_lib.flatten(params).items():
        (frozen if flat_labels[path] == FROZEN else trainable)[path] = leaf
    return trainable, frozen


def merge(like: PyTree, trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> PyTree:
    """Inverse of :func:`split`: a tree with ``like``'s structure."""
    return tree_lib.unflatten_like(like, {**trainable, **frozen})


def bn_frozen(labels: PyTree, batch_stats: PyTree) -> bool | None:
    """Whether every BatchNorm layer's parameters are frozen (None: no BatchNorm state).

    A BatchNorm layer is a module path that owns ``batch_stats`` (``stage1_block1/bn1``); its
    parameters are the label paths under the same module path.
    """
    owners = {p.rsplit("/", 1)[0] for p in tree_lib.paths(batch_stats)}
    if not owners:
        return None
    flat = tree_lib.flatten(labels)
    for owner in owners:
        own = [label for path, label in flat.items() if path.rsplit("/", 1)[0] == owner]
        if any(label != FROZEN for label in own):
            return False
    return True


def make_train_step(
    labels: PyTree,
    *,
    label_smoothing: float = 0.0,
    train_mode: bool | None = None,
    apply_fn: Callable | None = None,
) -> train.StepFn:
    """Returns ``train_step(state, batch, key) -> (state, metrics)`` for partly frozen models.

    ``state.params`` holds every parameter (so checkpoints, evaluation and export see the whole
    model) and ``state.tx`` should be :func:`optimizer` over the same ``labels``. Only the
    trainable leaves are differentiated; the frozen ones are closed-over constants of the loss
    and are put back unchanged, so they stay bit-identical whatever the optimizer does.

    Args:
      labels: the label pytree (static); leaves labelled :data:`FROZEN` are frozen.
      label_smoothing: label smoothing of the cross-entropy.
      train_mode: the model's ``train`` flag. ``None`` (default): ``False`` when every
        BatchNorm layer is frozen (inference-mode BatchNorm, statistics untouched), else
        ``True``. With ``True``, the statistics of frozen BatchNorm layers are still restored
        after the step (they never move), but those layers normalise with batch statistics.
      apply_fn: overrides ``state.apply_fn`` (same signature as ``model.apply``).
    """

    def train_step(state: train.TrainState, batch: train.Batch, key: jax.Array):
        fwd = apply_fn or state.apply_fn
        mode = train_mode
        frozen_bn = bn_frozen(labels, state.batch_stats)
        if mode is None:
            mode = not frozen_bn
        mutable = ["batch_stats"] if (state.batch_stats and mode) else False
        trainable, frozen = split(state.params, labels)

        def loss_fn(trainable):
            params = merge(state.params, trainable, frozen)
            out = fwd(
                state.variables(params),
                batch["x"],
                train=mode,
                rngs={"dropout": key},
                mutable=mutable,
            )
            logits, model_state = out if mutable else (out, {})
            loss = train.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing)
            return loss.mean(), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        # multi_transform wants the whole tree; set_to_zero never reads the frozen zeros, so XLA
        # drops them.
        full_grads = merge(state.params, grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = state.tx.update(full_grads, state.opt_state, state.params)
        flat_updates = tree_lib.flatten(updates)
        new_trainable = {p: (x + flat_updates[p]).astype(x.dtype) for p, x in trainable.items()}
        batch_stats = model_state.get("batch_stats", state.batch_stats)
        if mutable:
            batch_stats = _keep_frozen_stats(labels, state.batch_stats, batch_stats)
        state = state.replace(
            step=state.step + 1,
            params=merge(state.params, new_trainable, frozen),
            opt_state=opt_state,
            batch_stats=batch_stats,
        )
        hard = batch["label"]
        if hard.ndim == logits.ndim:
            hard = jnp.argmax(hard, -1)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == hard)
        return state, {"loss": loss, "accuracy": accuracy}

    return train_step


def _keep_frozen_stats(labels: PyTree, old: PyTree, new: PyTree) -> PyTree:
    """Puts back the statistics of BatchNorm layers whose parameters are all frozen."""
    flat_labels = tree_lib.flatten(labels)

    def pick(path, old_leaf, new_leaf):
        owner = path.rsplit("/", 1)[0]
        own = [lab for p, lab in flat_labels.items() if p.rsplit("/", 1)[0] == owner]
        return old_leaf if own and all(lab == FROZEN for lab in own) else new_leaf

    return tree_lib.map_with_path(pick, old, new)


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
