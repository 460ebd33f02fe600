"""Counting the multiply-adds that sparse weights save, the way the RigL paper counts them.

A kernel weight is used once per output position per example: once for a Dense kernel on a
vector, ``L_out`` times for a 1-D conv producing ``L_out`` positions. The forward FLOPs of a
layer are ``2 * nonzero weights * uses`` (a multiply and an add); biases, activations and
pooling are left out, as in Evci et al. (2020), Appendix H. Training FLOPs per step are then
combinations of the sparse forward ``f_S`` and the dense forward ``f_D``: a step costs
``3 f`` (forward, gradient w.r.t. activations, gradient w.r.t. weights), see
:func:`step_flops`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxopt_ft import tree

PyTree = Any


def kernel_uses(
    apply_fn: Callable[..., Any], variables: PyTree, x: jax.typing.ArrayLike
) -> dict[str, int]:
    """``{kernel path: uses per example}`` from one traced forward pass of a linen model.

    The uses of ``<module>/kernel`` are the positions of its module's output, the product of
    the output's dims between the batch and the feature axis (1 for Dense on vectors).

    Raises:
      ValueError: a kernel whose module records no output.
    """
    x1 = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jax.numpy.float32)
    run = lambda v, xb: apply_fn(v, xb, capture_intermediates=True, mutable=["intermediates"])
    _, state = jax.eval_shape(run, variables, x1)
    outputs = tree.flatten(state["intermediates"])
    uses, missing = {}, []
    for path in tree.flatten(variables["params"]):
        if not path.endswith("/kernel"):
            continue
        out = outputs.get(f"{path[: -len('/kernel')]}/__call__/0")
        if out is None:
            missing.append(path)
            continue
        uses[path] = int(math.prod(out.shape[1:-1]))
    if missing:
        raise ValueError(
            f"kernel_uses: no recorded output for the modules of {missing}. Fix: count FLOPs "
            "of linen models whose kernels belong to modules called once per forward pass."
        )
    return uses


def forward_flops(nonzero: Mapping[str, float], uses: Mapping[str, int]) -> float:
    """``sum_l 2 * nonzero_l * uses_l`` over the kernels in ``uses``.

    Raises:
      ValueError: ``nonzero`` lacks a kernel of ``uses``.
    """
    missing = sorted(set(uses) - set(nonzero))
    if missing:
        raise ValueError(f"forward_flops: no weight count for {missing}. Fix: pass every kernel.")
    return float(sum(2.0 * nonzero[p] * n for p, n in uses.items()))


def step_flops(sparse: float, dense: float, *, method: str, update_step: bool = False) -> float:
    """Training FLOPs of one step (Evci et al. 2020, Appendix H) from the forward FLOPs.

    - ``dense``: ``3 f_D``; ``sparse`` (static, SET, pruned weights): ``3 f_S``;
    - ``rigl``: ``3 f_S``, and on an update step ``2 f_S + f_D`` (the dense weight gradient);
    - ``ste``: ``f_S + 2 f_D`` (sparse forward, dense backward).

    Raises:
      ValueError: an unknown method.
    """
    costs = {
        "dense": lambda: 3.0 * dense,
        "sparse": lambda: 3.0 * sparse,
        "rigl": lambda: 2.0 * sparse + dense if update_step else 3.0 * sparse,
        "ste": lambda: sparse + 2.0 * dense,
    }
    if method not in costs:
        raise ValueError(f"step_flops: unknown method {method!r}; accepted: {list(costs)}.")
    return costs[method]()
