"""Integer inference: int8 x int8 -> int32 matmuls and convolutions, then one float rescale.

:func:`int8_apply_fn` runs a model whose params hold :class:`~jaxopt_ft.quant.core.QArray`
kernels (from :func:`~jaxopt_ft.quant.params.quantize_params`). An interceptor replaces each
weight op (``nn.Dense``, ``nn.DenseGeneral`` — attention's projections —, ``nn.Einsum``,
``nn.Conv``): the input is quantized with the same scale and rounding as
:func:`~jaxopt_ft.quant.qat.fake_quant_apply_fn`, multiplied with the integer kernel by the
op's own einsum (:func:`jaxopt_ft.ops.equation`) or by im2col for a conv, with
``preferred_element_type=int32``, and the int32 accumulator is rescaled by
``act_scale * weight_scale`` (the weight's per-channel scales sit on its output axes, e.g. per
head and channel of a 3-D attention kernel) and the float bias added. The
integer accumulator is exact, so the result differs from the fake-quant model only by the float
rounding of the latter's accumulation.

Asymmetric b-bit activations ``q`` in ``[0, 2**b - 1]`` are shifted by ``2**(b-1)`` to fit
int8; the zero point moves with them and is corrected with the kernel's sums,
``sum((q - zp) * w) = sum(q_s * w) - zp_s * sum(w)``.

Convolutions run as im2col: the int8 input is padded with its zero point (the integer of real
0, so borders need no correction), strided windows are concatenated into patches, and one
int8 ``dot_general`` multiplies them with the reshaped kernel. XLA's CPU backend runs an int8
``conv_general_dilated`` about 20x slower than a float conv, while the int8 matmul is as fast
as a float one. Grouped or input-dilated convs use ``conv_general_dilated`` with int32
accumulation instead, with the zero-point term computed as a one-channel conv of ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding
from jax import lax

from jaxopt_ft import ops as ops_lib
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.quant.core import QArray, is_qarray, quantize_values
from jaxopt_ft.quant.layers import (
    ActRanges,
    act_bits_map,
    act_qparams,
    is_layer_call,
    layer_path,
    lookup,
)
from jaxopt_ft.quant.params import dequantize_params

ApplyFn = Callable[..., Any]


def _check_weight(path: str, q: QArray, out_axes: tuple[int, ...]) -> None:
    if q.bits > 8 or not q.symmetric or not set(q.axis or ()) <= set(out_axes):
        raise ValueError(
            f"int8 inference: kernel {path!r} is quantized with bits={q.bits}, "
            f"symmetric={q.symmetric}, axis={q.axis}. Accepted: bits <= 8, symmetric, per "
            f"tensor or per channel along its output axes {out_axes}. Fix: quantize it so "
            "(quantize_params with axis=ops.kernel_axes(ops)), or keep it in float with a "
            "None rule."
        )


def _int_input(x: jax.Array, scale: jax.Array, zp: jax.Array, *, bits: int, symmetric: bool):
    """Quantized input as int8 plus the (shifted) integer zero point."""
    q = quantize_values(x, scale, zp, bits=bits, symmetric=symmetric)
    if symmetric:
        return q.astype(jnp.int8), None
    shift = 2 ** (bits - 1)
    return (q - shift).astype(jnp.int8), (zp - shift).astype(jnp.int32)


def _to_output(v: jax.Array, kept: str, out: str) -> jax.Array:
    """``v`` indexed by the kernel letters ``kept``, broadcastable against the output ``out``."""
    order = sorted(range(len(kept)), key=lambda i: out.index(kept[i]))
    v = jnp.transpose(v, order)
    shape = [v.shape[order.index(kept.index(c))] if c in kept else 1 for c in out]
    return v.reshape(shape)


def _matmul(module: nn.Module, eq: str, xq, zp_s, q: QArray, kq: jax.Array):
    """The op's einsum in integers, rescaled: returns the float output before the bias."""
    lhs, out = eq.split("->")
    ks = lhs.split(",")[1]
    contract, kept_axes = ops_lib.equation_axes(eq)
    kept = "".join(ks[i] for i in kept_axes)
    acc = jnp.einsum(eq, xq, kq, preferred_element_type=jnp.int32)
    if zp_s is not None:
        ksum = jnp.sum(kq.astype(jnp.int32), axis=contract)
        acc = acc - zp_s * _to_output(ksum, kept, out)
    wscale = jnp.reshape(q.scale, [q.shape[i] if i in (q.axis or ()) else 1 for i in kept_axes])
    return acc, _to_output(wscale, kept, out)


def _conv_im2col(xq, kq, strides, padding, k_dil, fill) -> jax.Array:
    """int8 conv as patches @ kernel: XLA's CPU int8 convolution is ~20x slower than this."""
    nsp = kq.ndim - 2
    k_eff = [(k - 1) * d + 1 for k, d in zip(kq.shape[:nsp], k_dil, strict=True)]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(xq.shape[1:-1], k_eff, strides, padding)
    # Padding holds the integer of real 0 (the zero point), so no correction for borders.
    xp = jnp.pad(xq, [(0, 0), *padding, (0, 0)], constant_values=fill)
    out = [(xp.shape[1 + i] - k_eff[i]) // strides[i] + 1 for i in range(nsp)]
    cols = []
    for tap in np.ndindex(*kq.shape[:nsp]):  # row-major, like kq.reshape(-1, features)
        window = (
            slice(t * d, t * d + s * (o - 1) + 1, s)
            for t, d, s, o in zip(tap, k_dil, strides, out, strict=True)
        )
        cols.append(xp[(slice(None), *window, slice(None))])
    patches = jnp.concatenate(cols, axis=-1)
    kmat = kq.reshape(-1, kq.shape[-1])
    return lax.dot_general(
        patches, kmat, (((nsp + 1,), (0,)), ((), ())), preferred_element_type=jnp.int32
    )


def _conv(module: nn.Conv, x: jax.Array, xq, zp_s, kq: jax.Array):
    if module.mask is not None:
        raise ValueError(
            f"int8 inference: Conv {layer_path(module)!r} has a weight mask. Accepted: "
            "unmasked nn.Conv. Fix: fold the mask into the kernel before quantizing."
        )
    nsp = kq.ndim - 2

    def bcast(v: Any) -> tuple[int, ...]:
        v = 1 if v is None else v
        return (v,) * nsp if isinstance(v, int) else tuple(v)

    strides, in_dil, k_dil = (
        bcast(module.strides),
        bcast(module.input_dilation),
        bcast(module.kernel_dilation),
    )
    batch_shape = xq.shape[: xq.ndim - (nsp + 1)]
    xq = xq.reshape((-1,) + xq.shape[len(batch_shape) :])
    ones = jnp.ones(xq.shape[:-1] + (module.feature_group_count,), jnp.float32)
    padding = canonicalize_padding(module.padding, nsp)
    if padding in ("CIRCULAR", "REFLECT"):
        k_eff = [(k - 1) * d + 1 for k, d in zip(kq.shape[:nsp], k_dil, strict=True)]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in k_eff] + [(0, 0)]
        mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding]
        xq, ones, padding = jnp.pad(xq, pads, mode=mode), jnp.pad(ones, pads, mode=mode), "VALID"
    elif padding == "CAUSAL":
        padding = [(k_dil[0] * (kq.shape[0] - 1), 0)]
    ksum = jnp.sum(kq.astype(jnp.int32), axis=tuple(range(nsp + 1)))
    if module.feature_group_count == 1 and all(d == 1 for d in in_dil):
        fill = jnp.zeros((), jnp.int8) if zp_s is None else zp_s.astype(jnp.int8)
        acc = _conv_im2col(xq, kq, strides, padding, k_dil, fill)
        if zp_s is not None:
            acc = acc - zp_s * ksum
        return acc.reshape(batch_shape + acc.shape[1:])
    dn = lax.ConvDimensionNumbers(
        lhs_spec=(0, nsp + 1) + tuple(range(1, nsp + 1)),
        rhs_spec=(nsp + 1, nsp) + tuple(range(nsp)),
        out_spec=(0, nsp + 1) + tuple(range(1, nsp + 1)),
    )
    conv = lambda lhs, rhs, **kw: lax.conv_general_dilated(
        lhs,
        rhs,
        strides,
        padding,
        lhs_dilation=in_dil,
        rhs_dilation=k_dil,
        dimension_numbers=dn,
        feature_group_count=module.feature_group_count,
        **kw,
    )
    acc = conv(xq, kq, preferred_element_type=jnp.int32)
    if zp_s is not None:
        # lax pads with integer 0, not the zero point: subtract zp * (kernel sum over the
        # taps that fall inside the input), a one-channel conv of ones, exact below 2**24.
        ksum_taps = jnp.sum(kq.astype(jnp.float32), axis=-2, keepdims=True)
        acc = acc - zp_s * jnp.round(conv(ones, ksum_taps)).astype(jnp.int32)
    return acc.reshape(batch_shape + acc.shape[1:])


def int8_interceptor(
    qkernels: dict[str, QArray],
    bits_by_layer: dict[str, int | None],
    *,
    symmetric: bool,
    act_ranges: ActRanges | None,
) -> Callable[..., Any]:
    """An interceptor that runs matmul and conv ops with quantized kernels in integers.

    Ops whose kernel is float, or whose activation bits are None, run unchanged (in float).
    """

    def interceptor(next_fun, args, kwargs, context):
        if not is_layer_call(context):
            return next_fun(*args, **kwargs)
        module = context.module
        path = layer_path(module)
        kpath = f"{path}/kernel" if path else "kernel"
        q = qkernels.get(kpath)
        bits = lookup(bits_by_layer, path, "activation bits")
        if q is None or bits is None:
            return next_fun(*args, **kwargs)
        if bits > 8:
            raise ValueError(
                f"int8 inference: act bits {bits} for layer {path!r}. Accepted: 2-8. Fix: "
                "use act bits <= 8, or fake_quant_apply_fn for wider activations."
            )
        x = args[0]
        conv = isinstance(module, nn.Conv)
        eq = None if conv else ops_lib.equation(module, x.ndim, args, kwargs)
        out_axes = (len(q.shape) - 1,) if conv else ops_lib.equation_axes(eq)[1]
        _check_weight(kpath, q, out_axes)
        scale, zp = act_qparams(x, path, bits=bits, symmetric=symmetric, act_ranges=act_ranges)
        xq, zp_s = _int_input(x, scale, zp, bits=bits, symmetric=symmetric)
        kq = q.int_values().reshape(q.shape).astype(jnp.int8)
        if conv:
            acc, wscale = _conv(module, x, xq, zp_s, kq), q.scale.reshape(-1)
        else:
            acc, wscale = _matmul(module, eq, xq, zp_s, q, kq)
        y = acc.astype(jnp.float32) * (scale * wscale)
        if module.use_bias:
            bias = module.get_variable("params", "bias")
            if eq is not None:  # an einsum's bias covers the kernel's letters in the output
                out, ks = eq.split("->")[1], eq.split("->")[0].split(",")[1]
                bias = bias.reshape([y.shape[i] if c in ks else 1 for i, c in enumerate(out)])
            y = y + bias
        return y.astype(module.dtype or x.dtype)

    return interceptor


def int8_apply_fn(
    model: nn.Module,
    *,
    act_bits: int | None | list[tuple[str, Any]] = 8,
    act_ranges: ActRanges | None = None,
    act_symmetric: bool = False,
) -> ApplyFn:
    """Returns ``apply_fn(qvariables, *args, **kwargs)`` running ``model`` in int8.

    ``qvariables["params"]`` holds QArray kernels from
    :func:`~jaxopt_ft.quant.params.quantize_params` (symmetric, per output channel or per
    tensor, at most 8 bits). Its predictions match ``fake_quant_apply_fn(model, weight_bits=
    <same rules>, act_bits=act_bits, act_ranges=act_ranges, act_symmetric=act_symmetric)``
    up to float rounding.

    Args:
      model: A linen module using ``nn.Dense`` / ``nn.Conv``.
      act_bits: Input width per layer (2-8), None, or rules over layer paths.
      act_ranges: Calibrated ranges (:func:`calibrate`), or None for per-batch ranges
        (dynamic quantization).
      act_symmetric: Symmetric activations, else asymmetric with a zero point.

    Returns:
      A drop-in for ``model.apply`` taking quantized variables.

    Raises:
      ValueError: (when called) a kernel or width the integer path cannot run, or a layer
        missing from ``act_ranges``.
    """

    def apply_fn(qvariables: Any, *args: Any, **kwargs: Any) -> Any:
        qparams = qvariables["params"]
        flat = tree_lib.flatten(qparams, is_leaf=is_qarray)
        qkernels = {p: x for p, x in flat.items() if is_qarray(x)}
        # Dequantized params serve layers that stay in float; unused kernels are pruned by XLA.
        params = dequantize_params(qparams)
        interceptor = int8_interceptor(
            qkernels,
            act_bits_map(params, act_bits),
            symmetric=act_symmetric,
            act_ranges=act_ranges,
        )
        variables = {**qvariables, "params": params}
        with nn.intercept_methods(interceptor):
            return model.apply(variables, *args, **kwargs)

    return apply_fn


def int8_apply(
    model: nn.Module,
    qvariables: Any,
    *args: Any,
    act_bits: int | None | list[tuple[str, Any]] = 8,
    act_ranges: ActRanges | None = None,
    act_symmetric: bool = False,
    **kwargs: Any,
) -> Any:
    """One integer ``model.apply``; see :func:`int8_apply_fn`."""
    fn = int8_apply_fn(model, act_bits=act_bits, act_ranges=act_ranges, act_symmetric=act_symmetric)
    return fn(qvariables, *args, **kwargs)
