"""Quantization: fake-quant (STE), PTQ with calibration, QAT, int8 inference, int4/sparse export.

Pure functions over linen param trees. Weights are selected by ``(regex, bits)`` rules over
param paths; activations are the inputs of every weight op (``nn.Dense``, ``nn.DenseGeneral``
— attention's projections —, ``nn.Einsum``, ``nn.Conv``; :mod:`jaxopt_ft.ops`), reached
through :func:`flax.linen.intercept_methods`, so models need no changes. Per-output-channel
scales of any kernel shape come from ``ops.kernel_axes(ops.find_ops(model, variables, x))``.

Example (PTQ, weights + activations, then integer inference)::

    axes = ops.kernel_axes(ops.find_ops(model, {"params": params}, x))
    qparams = quantize_params(params, [("head/kernel", 8), (".*kernel", 8), (".*", None)],
                              axis=axes)
    ranges = calibrate(model, {"params": params}, calib_batches, observer="percentile")
    logits = int8_apply(model, {"params": qparams}, x, act_ranges=ranges)
    size = export_quantized("model.jfq", qparams)
"""

from jaxopt_ft.quant.calibrate import (
    OBSERVERS,
    calibrate,
)
from jaxopt_ft.quant.core import (
    QArray,
    check_bits,
    dequantize,
    fake_quant,
    is_qarray,
    pack_int4,
    qparams,
    quantize,
    unpack_int4,
)
from jaxopt_ft.quant.export import (
    ENCODINGS,
    compression,
    directory_bytes,
    export_quantized,
    load_quantized,
    restore_quantized,
    save_quantized,
)
from jaxopt_ft.quant.int8 import (
    int8_apply,
    int8_apply_fn,
)
from jaxopt_ft.quant.layers import (
    LAYER_TYPES,
    act_bits_map,
    layer_paths,
)
from jaxopt_ft.quant.params import (
    QuantSpec,
    dequantize_params,
    fake_quant_params,
    quantize_params,
    quantized_bytes,
    weight_specs,
)
from jaxopt_ft.quant.qat import (
    fake_quant_apply_fn,
    qat_apply,
)
from jaxopt_ft.quant.sparse import (
    decode_bitmask,
    decode_relative,
    encode_bitmask,
    encode_relative,
)

__all__ = [
    "ENCODINGS",
    "LAYER_TYPES",
    "OBSERVERS",
    "QArray",
    "QuantSpec",
    "act_bits_map",
    "calibrate",
    "check_bits",
    "compression",
    "decode_bitmask",
    "decode_relative",
    "dequantize",
    "dequantize_params",
    "directory_bytes",
    "encode_bitmask",
    "encode_relative",
    "export_quantized",
    "fake_quant",
    "fake_quant_apply_fn",
    "fake_quant_params",
    "is_qarray",
    "int8_apply",
    "int8_apply_fn",
    "layer_paths",
    "load_quantized",
    "pack_int4",
    "qat_apply",
    "qparams",
    "quantize",
    "quantize_params",
    "quantized_bytes",
    "restore_quantized",
    "save_quantized",
    "unpack_int4",
    "weight_specs",
]
