"""Quantization-aware training and fake-quant evaluation without changes to the model code.

:func:`fake_quant_apply_fn` wraps ``model.apply``: weights are fake-quantized as a pure map over
the param tree (:func:`~jaxopt_ft.quant.params.fake_quant_params`) before the forward, and the
input of every weight op (``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum``, ``nn.Conv``; see
:mod:`jaxopt_ft.ops`) is fake-quantized by an interceptor registered
with :func:`flax.linen.intercept_methods`. Gradients pass straight through both.

Why ``intercept_methods`` rather than an injected ``dot_general`` / conv: the interceptor sees
the module, hence its path (``"conv1"``), so per-layer rules and calibrated ranges can be looked
up by name, and it works on any model that uses the stock layers. An injected ``dot_general``
must be set as a field on every layer (a model change), sees neither the layer's name nor which
operand is the weight, and flax marks ``Conv.conv_general_dilated`` as deprecated. Quantizing
weights outside the model, on the param tree, keeps that half pure and identical to
``dequantize(quantize(w))`` used by the integer path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxopt_ft.quant.core import fake_quant
from jaxopt_ft.quant.layers import (
    ActRanges,
    act_bits_map,
    act_bounds,
    is_layer_call,
    layer_path,
    lookup,
)
from jaxopt_ft.quant.params import Axes, BitsRules, fake_quant_params

ApplyFn = Callable[..., Any]


def activation_interceptor(
    bits_by_layer: dict[str, int | None],
    *,
    symmetric: bool,
    act_ranges: ActRanges | None,
    axis_name: str | None = None,
) -> Callable[..., Any]:
    """An interceptor that fake-quantizes the input of each matmul / conv op.

    Args:
      bits_by_layer: ``{layer path: bits or None}`` from
        :func:`~jaxopt_ft.quant.layers.act_bits_map`.
      symmetric: Symmetric activations, else asymmetric with an integral zero point.
      act_ranges: Calibrated ``{layer: (lo, hi)}``, or None for each batch's own min/max.
      axis_name: Under ``pmap``, the device axis over which a batch's min/max is taken.
    """

    def interceptor(next_fun, args, kwargs, context):
        if not is_layer_call(context):
            return next_fun(*args, **kwargs)
        path = layer_path(context.module)
        bits = lookup(bits_by_layer, path, "activation bits")
        if bits is None:
            return next_fun(*args, **kwargs)
        x = args[0]
        bounds = act_bounds(x, path, act_ranges, axis_name=axis_name)
        xq = fake_quant(x, bits=bits, symmetric=symmetric, bounds=bounds)
        return next_fun(xq, *args[1:], **kwargs)

    return interceptor


def fake_quant_apply_fn(
    model: nn.Module,
    *,
    weight_bits: BitsRules = 8,
    act_bits: int | None | list[tuple[str, Any]] = 8,
    act_ranges: ActRanges | None = None,
    weight_axis: Axes = -1,
    weight_symmetric: bool = True,
    act_symmetric: bool = False,
    axis_name: str | None = None,
) -> ApplyFn:
    """Returns ``apply_fn`` with ``model.apply``'s signature that runs the model fake-quantized.

    Use it in a train step for QAT, or with calibrated ``act_ranges`` as the float reference of
    PTQ and of :func:`~jaxopt_ft.quant.int8.int8_apply_fn` (same integers, same scales).

    Args:
      model: A linen module (its Dense / DenseGeneral / Einsum / Conv calls are the ops).
      weight_bits: Rules over param paths, e.g. ``[("conv1/kernel", 8), ("head/kernel", 8),
        (".*kernel", 4), (".*", None)]``; an int means every kernel at that width; None none.
      act_bits: Width of every layer's input, None for float inputs, or rules over layer
        paths, e.g. ``[("conv1|head", 8), (".*", 4)]``.
      act_ranges: Calibrated ``{layer: (lo, hi)}`` (:func:`calibrate`), or None to use each
        batch's min/max (typical during QAT).
      weight_axis: Default per-channel axis of weights (-1: the last), or ``{path: axes}``:
        ``ops.kernel_axes(ops.find_ops(model, variables, x))`` gives every kernel its output
        axes (attention projections: per head and channel).
      weight_symmetric: Default weight symmetry.
      act_symmetric: Symmetric activations; the default asymmetric spends all levels on the
        non-negative outputs of a ReLU.
      axis_name: Under ``pmap`` (``strategy.axis_name``), per-batch activation ranges are
        reduced over this device axis, so they are the global batch's, as on one device.

    Returns:
      ``apply_fn(variables, *args, **kwargs)``, a drop-in for ``model.apply``.

    Raises:
      ValueError: (when called) bad bits, rules matching nothing or leaving a leaf uncovered,
        or a layer missing from ``act_ranges``.

    Example:
      >>> apply_fn = fake_quant_apply_fn(model, weight_bits=4, act_bits=8)
      >>> logits = apply_fn(variables, x, train=True)  # in the loss, instead of model.apply
    """

    def apply_fn(variables: Any, *args: Any, **kwargs: Any) -> Any:
        params = variables["params"]
        qparams = fake_quant_params(
            params, weight_bits, axis=weight_axis, symmetric=weight_symmetric
        )
        interceptor = activation_interceptor(
            act_bits_map(params, act_bits),
            symmetric=act_symmetric,
            act_ranges=act_ranges,
            axis_name=axis_name,
        )
        with nn.intercept_methods(interceptor):
            return model.apply({**variables, "params": qparams}, *args, **kwargs)

    return apply_fn


def qat_apply(
    model: nn.Module,
    variables: Any,
    *args: Any,
    weight_bits: BitsRules = 8,
    act_bits: int | None | list[tuple[str, Any]] = 8,
    act_ranges: ActRanges | None = None,
    weight_axis: Axes = -1,
    weight_symmetric: bool = True,
    act_symmetric: bool = False,
    **kwargs: Any,
) -> Any:
    """One fake-quantized ``model.apply(variables, *args, **kwargs)``; see
    :func:`fake_quant_apply_fn`."""
    fn = fake_quant_apply_fn(
        model,
        weight_bits=weight_bits,
        act_bits=act_bits,
        act_ranges=act_ranges,
        weight_axis=weight_axis,
        weight_symmetric=weight_symmetric,
        act_symmetric=act_symmetric,
    )
    return fn(variables, *args, **kwargs)
