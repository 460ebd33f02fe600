"""The weight ops of a linen model: every matmul, einsum, convolution and embedding lookup.

Quantization, N:M pruning and LoRA need to know more about a kernel than its path: which of its
axes are contracted with the input and which index the outputs. A 2-D ``Dense`` kernel is
``(in, out)``, but an attention projection built from ``nn.DenseGeneral`` is
``(hidden, heads, head_dim)`` (query/key/value) or ``(heads, head_dim, hidden)`` (output), and
an ``nn.Einsum`` kernel can put its output axes anywhere. :func:`find_ops` traces the model once
(abstractly, with :func:`jax.eval_shape`) and intercepts the stock layers that own a weight,
recording for each call its module path (the op's name and the prefix of its params), its kind,
its weight's path and the weight's contraction and output axes, from the einsum equation the
layer computes.

The op kinds: ``"dense"`` (``nn.Dense``), ``"dense_general"`` (``nn.DenseGeneral``, which
``nn.MultiHeadDotProductAttention`` uses for its four projections), ``"einsum"``
(``nn.Einsum``), ``"conv"`` (``nn.Conv``) and ``"embed"`` (``nn.Embed``, a table lookup: its
weight can be quantized, its integer input cannot).

Example::

    ops = find_ops(model, variables, x, train=False)
    ops["block1/attn/query"].out_axes        # (1, 2): heads and head_dim
    axes = kernel_axes(ops)                  # {"block1/attn/query/kernel": (1, 2), ...}
    qparams = quant.quantize_params(params, 8, axis=axes)   # per head and output channel
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

PyTree = Any
MATMUL_TYPES: dict[type[nn.Module], str] = {
    nn.Dense: "dense",
    nn.DenseGeneral: "dense_general",
    nn.Einsum: "einsum",
    nn.Conv: "conv",
}
WEIGHT_TYPES: dict[type[nn.Module], str] = {**MATMUL_TYPES, nn.Embed: "embed"}
MATMUL_KINDS = tuple(MATMUL_TYPES.values())


@dataclasses.dataclass(frozen=True)
class Op:
    """One weight op of a model.

    Attributes:
      name: the module path (``"block1/attn/query"``), the prefix of its params.
      kind: ``"dense"``, ``"dense_general"``, ``"einsum"``, ``"conv"`` or ``"embed"``.
      weight: the weight's param path (``".../kernel"``, ``".../embedding"``).
      shape: the weight's shape.
      contract_axes: weight axes summed against the input (a conv: its window and input
        channels; an embedding: its feature axis, as in ``Embed.attend``).
      out_axes: weight axes that index the outputs (per-output-channel scales live here).
      equation: the einsum the op computes, ``"<input>,<weight>-><output>"`` with the
        ellipsis spelled out, or None for convolutions and embeddings.
    """

    name: str
    kind: str
    weight: str
    shape: tuple[int, ...]
    contract_axes: tuple[int, ...]
    out_axes: tuple[int, ...]
    equation: str | None

    @property
    def size(self) -> int:
        """Number of weight entries."""
        return int(np.prod(self.shape))


def module_path(module: nn.Module) -> str:
    """The module's path joined with ``/`` (the prefix of its params' paths)."""
    return "/".join(str(p) for p in module.path)


def _letters(n: int, start: int = 0) -> str:
    pool = string.ascii_letters
    if start + n > len(pool):
        raise ValueError(f"an op with {start + n} axes has more axes than einsum letters.")
    return pool[start : start + n]


def equation(module: nn.Module, x_ndim: int, args: tuple, kwargs: Mapping[str, Any]) -> str:
    """The explicit einsum ``"<x>,<kernel>-><y>"`` a Dense / DenseGeneral / Einsum call computes.

    Args:
      module: the intercepted layer.
      x_ndim: rank of its input.
      args, kwargs: the call's arguments (``nn.Einsum`` may take its equation there).

    Raises:
      ValueError: a ``DenseGeneral`` with ``batch_dims`` (its kernel carries batch axes that
        no per-channel rule can describe), or an einsum that is not two explicit operands.
    """
    if isinstance(module, nn.Dense):
        xs = _letters(x_ndim)
        out = _letters(1, x_ndim)
        return f"{xs},{xs[-1]}{out}->{xs[:-1]}{out}"
    if isinstance(module, nn.DenseGeneral):
        if module.batch_dims:
            raise ValueError(
                f"op {module_path(module)!r}: DenseGeneral with batch_dims="
                f"{module.batch_dims} is not supported. Fix: use batch_dims=() (vmap the "
                "layer instead)."
            )
        axis = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
        axis = tuple(a % x_ndim for a in axis)
        features = (module.features,) if isinstance(module.features, int) else module.features
        xs = _letters(x_ndim)
        fs = _letters(len(features), x_ndim)
        kernel = "".join(xs[a] for a in axis) + fs
        free = "".join(c for i, c in enumerate(xs) if i not in axis)
        return f"{xs},{kernel}->{free}{fs}"
    eq = args[1] if len(args) > 1 else kwargs.get("einsum_str") or module.einsum_str
    eq = eq.replace(" ", "")
    if "->" not in eq or eq.count(",") != 1:
        raise ValueError(f"op {module_path(module)!r}: einsum {eq!r} is not 'x,kernel->y'.")
    lhs, out = eq.split("->")
    xs, ks = lhs.split(",")
    if "..." in xs:
        used = set(xs + ks + out) - {"."}
        free = [c for c in string.ascii_letters if c not in used]
        n = x_ndim - (len(xs) - 3)
        fill = "".join(free[:n])
        xs, out = xs.replace("...", fill), out.replace("...", fill)
    return f"{xs},{ks}->{out}"


def equation_axes(eq: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(contract_axes, out_axes)`` of the weight (second operand) of an explicit einsum."""
    lhs, out = eq.split("->")
    ks = lhs.split(",")[1]
    contract = tuple(i for i, c in enumerate(ks) if c not in out)
    kept = tuple(i for i, c in enumerate(ks) if c in out)
    return contract, kept


def _op(module: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> Op:
    kind = _kind_of(module)
    name = module_path(module)
    prefix = f"{name}/" if name else ""
    if kind == "embed":
        shape = (module.num_embeddings, module.features)
        return Op(name, kind, f"{prefix}embedding", shape, (1,), (0,), None)
    kernel = module.get_variable("params", "kernel")
    shape = tuple(int(d) for d in np.shape(kernel))
    if kind == "conv":
        nd = len(shape)
        return Op(name, kind, f"{prefix}kernel", shape, tuple(range(nd - 1)), (nd - 1,), None)
    eq = equation(module, np.ndim(args[0]), args, kwargs)
    contract, out = equation_axes(eq)
    return Op(name, kind, f"{prefix}kernel", shape, contract, out, eq)


def _kind_of(module: nn.Module) -> str:
    for cls, kind in WEIGHT_TYPES.items():
        if isinstance(module, cls):
            return kind
    raise KeyError(type(module).__name__)


def is_weight_call(context: Any, kinds: tuple[str, ...] = MATMUL_KINDS) -> bool:
    """Whether an interceptor context is ``__call__`` of a layer of one of ``kinds``."""
    if context.method_name != "__call__":
        return False
    return any(isinstance(context.module, c) and k in kinds for c, k in WEIGHT_TYPES.items())


def find_ops(model: nn.Module, variables: PyTree, *args: Any, **kwargs: Any) -> dict[str, Op]:
    """Every weight op ``model.apply(variables, *args, **kwargs)`` calls, in call order.

    The model is traced abstractly (nothing is computed); a layer called several times is one
    op. ``variables`` and ``args`` may be arrays or ``jax.ShapeDtypeStruct``s; ``kwargs`` are
    static (``train=False``).

    Returns:
      ``{op name: Op}``.
    """
    found: dict[str, Op] = {}

    def interceptor(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if is_weight_call(context, tuple(WEIGHT_TYPES.values())):
            op = _op(context.module, call_args, call_kwargs)
            found.setdefault(op.name, op)
        return out

    def run(v, a):
        with nn.intercept_methods(interceptor):
            return model.apply(v, *a, **kwargs)

    jax.eval_shape(run, variables, args)
    return found


def kernel_axes(ops: Mapping[str, Op]) -> dict[str, tuple[int, ...]]:
    """``{weight path: output axes}``: per-output-channel quantization axes for every op."""
    return {op.weight: op.out_axes for op in ops.values()}


def contraction_axes(ops: Mapping[str, Op]) -> dict[str, tuple[int, ...]]:
    """``{weight path: contraction axes}`` of the matmul and conv ops (N:M groups, LoRA)."""
    return {op.weight: op.contract_axes for op in ops.values() if op.kind in MATMUL_KINDS}


def weight_fraction(ops: Mapping[str, Op], chosen: Any) -> float:
    """Fraction of the matmul/conv ops' weight entries whose path is in ``chosen``."""
    mm = [op for op in ops.values() if op.kind in MATMUL_KINDS]
    total = sum(op.size for op in mm)
    return 0.0 if total == 0 else sum(op.size for op in mm if op.weight in chosen) / total
