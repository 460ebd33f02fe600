"""LoRA: low-rank adapters on chosen kernels, as a pure pytree transform.

An adapted kernel ``W`` of shape ``(*fan_in_dims, *out_dims)`` (Dense ``(in, out)``, Conv
``(*window, in, out)``, attention's query/key/value ``(hidden, heads, head_dim)`` and output
``(heads, head_dim, hidden)`` projections) becomes ``W + alpha / r * (A @ B).reshape(W.shape)``
with ``A`` of shape ``(prod(fan_in_dims), r)`` and ``B`` of shape ``(r, prod(out_dims))``. By
default every axis but the last is fan-in; :func:`fan_in_axes` reads the true split of every
op from :func:`jaxopt_ft.ops.find_ops` (a query kernel: 1 fan-in axis, so ``B`` is
``(r, heads * head_dim)``). ``B`` starts at zero, so the adapted
model starts exactly where the pretrained one is. Adapters live in their own tree that mirrors
the params' paths (``{"conv2": {"kernel": {"a": A, "b": B}}}``), and a LoRA model's params are
``{"base": params, "lora": adapters}``: freezing ``base/.*`` and training ``lora/.*`` is an
ordinary freeze rule, and checkpoints need nothing special. :func:`export` merges the adapters
into the kernels and returns plain params for the original model.

Example:
    >>> adapters = init(params, targets=["conv[23]/kernel"], rank=4, key=key)
    >>> lora_params = {"base": params, "lora": adapters}
    >>> apply = wrap_apply(model.apply, alpha=8.0)
    >>> logits = apply({"params": lora_params}, x)          # == model.apply at step 0
    >>> plain = export(lora_params, alpha=8.0)              # for model.apply
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxopt_ft import tree as tree_lib

PyTree = Any


def _check(rank: int, alpha: float | None = None) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}.")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r}.")


def fan_in_axes(ops: Mapping[str, Any]) -> dict[str, int]:
    """``{kernel path: number of leading fan-in axes}`` of the matmul / conv ops.

    Args:
      ops: ``jaxopt_ft.ops.find_ops(model, variables, x)``.

    Raises:
      ValueError: an op whose contraction axes are not the kernel's leading axes (an
        ``nn.Einsum`` such as ``"btd,hdk->bthk"``), which ``A @ B`` cannot express.
    """
    out = {}
    for op in ops.values():
        if op.kind == "embed":
            continue
        k = len(op.contract_axes)
        if op.contract_axes != tuple(range(k)):
            raise ValueError(
                f"LoRA on op {op.name!r}: its kernel {op.shape} contracts axes "
                f"{op.contract_axes}, not its leading axes, so no A @ B of (fan_in, r) x "
                "(r, out) reshapes into it. Fix: drop it from the targets, or write the einsum "
                "with the contracted axes first."
            )
        out[op.weight] = k
    return out


def init(
    params: PyTree,
    *,
    targets: Sequence[str],
    rank: int | Sequence[tuple[str, int]],
    key: jax.Array,
    dtype: Any = None,
    fan_in: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Creates adapters ``{"a", "b"}`` for every kernel whose path matches a target regex.

    ``A`` is drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (a linear layer's default init),
    ``B`` is zero.

    Args:
      params: the pretrained params (only paths, shapes and dtypes are read).
      targets: regexes (``re.fullmatch``) selecting kernels, e.g. ``["conv[23]/kernel"]``.
      rank: the adapters' rank ``r``, at most ``min(fan_in, out)`` of every target, or rules
        ``[(regex over target paths, rank), ...]`` covering every target (e.g. rank 8 on
        ``.*attn/(query|value)/kernel``, 4 on ``.*mlp.*``).
      key: PRNG key for ``A``.
      dtype: adapters' dtype (default: each kernel's dtype).
      fan_in: ``{kernel path: number of leading fan-in axes}`` (:func:`fan_in_axes`); kernels
        it does not name have every axis but the last as fan-in.

    Returns:
      The adapter tree, mirroring the targets' paths.

    Raises:
      ValueError: a target matches nothing, matches a leaf that is not a kernel of rank >= 2,
        or the rank exceeds a target's ``min(fan_in, out)``.
    """
    if isinstance(rank, list | tuple):
        for _, r in rank:
            _check(r)
    else:
        _check(rank)
    if isinstance(targets, str) or not targets:
        raise ValueError(
            f"LoRA targets must be a non-empty list of regexes, got {targets!r}; "
            "e.g. targets=['conv[23]/kernel']."
        )
    chosen = tree_lib.match_rules(
        params, [(rx, True) for rx in targets], what="LoRA targets", default=False
    )
    flat = tree_lib.flatten(params)
    out = {}
    selected = [p for p, hit in chosen.items() if hit]
    if isinstance(rank, list | tuple):
        ranks = tree_lib.match_rules(dict.fromkeys(selected, 0), list(rank), what="LoRA rank rules")
    else:
        ranks = dict.fromkeys(selected, rank)
    keys = jax.random.split(key, len(selected))
    for k, path in zip(keys, selected, strict=True):
        rank_p = ranks[path]
        kernel = flat[path]
        shape = tuple(kernel.shape)
        if len(shape) < 2:
            raise ValueError(
                f"LoRA target {path!r} has shape {shape}; adapters need kernels of rank >= 2. "
                "Narrow the target regexes to kernels (e.g. 'conv2/kernel')."
            )
        k_in = (fan_in or {}).get(path, len(shape) - 1)
        fan_in_size, fan_out = math.prod(shape[:k_in]), math.prod(shape[k_in:])
        if rank_p > min(fan_in_size, fan_out):
            raise ValueError(
                f"LoRA rank {rank_p} exceeds min(fan_in, out) = {min(fan_in_size, fan_out)} of "
                f"{path!r} (shape {shape}); lower the rank or drop that target."
            )
        dt = dtype or kernel.dtype
        bound = 1.0 / math.sqrt(fan_in_size)
        out[f"{path}/a"] = jax.random.uniform(k, (fan_in_size, rank_p), dt, -bound, bound)
        out[f"{path}/b"] = jnp.zeros((rank_p, fan_out), dt)
    return tree_lib.unflatten(out)


def merge(params: PyTree, adapters: PyTree, *, alpha: float) -> PyTree:
    """Returns ``params`` with ``alpha / r * A @ B`` added to every adapted kernel.

    Args:
      params: the base params.
      adapters: a tree from :func:`init` (possibly trained).
      alpha: the LoRA scale numerator; each adapter is scaled by ``alpha / r``.

    Raises:
      ValueError: an adapter names a path that is not in ``params``.
    """
    flat = dict(tree_lib.flatten(params))
    flat_ad = tree_lib.flatten(adapters)
    for path_a, a in flat_ad.items():
        if not path_a.endswith("/a"):
            continue
        path = path_a[: -len("/a")]
        if path not in flat:
            raise ValueError(
                f"LoRA adapter for {path!r} but params have no such leaf; params paths: "
                f"{list(flat)}. Create adapters from these params."
            )
        b = flat_ad[f"{path}/b"]
        kernel = flat[path]
        delta = (a @ b) * (alpha / a.shape[-1])
        flat[path] = kernel + delta.reshape(kernel.shape).astype(kernel.dtype)
    return tree_lib.unflatten_like(params, flat)


def wrap_apply(apply_fn: Callable, *, alpha: float) -> Callable:
    """Wraps ``model.apply`` to take ``{"params": {"base": ..., "lora": ...}, ...}``."""
    _check(1, alpha)

    def apply(variables, *args, **kwargs):
        p = variables["params"]
        merged = merge(p["base"], p["lora"], alpha=alpha)
        return apply_fn({**variables, "params": merged}, *args, **kwargs)

    return apply


def export(params: PyTree, *, alpha: float) -> PyTree:
    """Merges ``{"base", "lora"}`` params into plain params for the original model."""
    if not (isinstance(params, dict) and set(params) == {"base", "lora"}):
        raise ValueError(
            "export expects LoRA params {'base': ..., 'lora': ...}, got keys "
            f"{sorted(params) if isinstance(params, dict) else type(params).__name__}."
        )
    return merge(params["base"], params["lora"], alpha=alpha)


def count(adapters: PyTree) -> int:
    """Number of adapter scalars."""
    return tree_lib.count_params(adapters)
