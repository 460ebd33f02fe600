"""Activation ranges for post-training quantization, from calibration batches.

The inputs of every ``nn.Dense`` / ``nn.Conv`` call are observed with
:func:`flax.linen.intercept_methods`, so any linen model can be calibrated without changes.
Per batch a jitted forward returns each layer's statistics; an observer folds them over batches:

- ``"minmax"``: the smallest minimum and largest maximum seen;
- ``"moving_average"``: an exponential moving average of per-batch min and max (TF-Lite's
  ``MovingAverageMinMax``), less sensitive to one outlier batch;
- ``"percentile"``: the mean over batches of the ``100 - p`` and ``p`` percentiles, which clips
  rare outliers so the bulk of the distribution gets finer steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft.quant.layers import is_layer_call, layer_path

OBSERVERS = ("minmax", "moving_average", "percentile")


def _check(observer: str, momentum: float, percentile: float) -> None:
    if observer not in OBSERVERS:
        raise ValueError(
            f"observer={observer!r} is unknown. Accepted: {', '.join(OBSERVERS)}. Fix: pass "
            "one of these."
        )
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"momentum={momentum} is out of range. Accepted: 0 <= momentum < 1. Fix: pass "
            "e.g. momentum=0.9."
        )
    if not 50.0 < percentile <= 100.0:
        raise ValueError(
            f"percentile={percentile} is out of range. Accepted: 50 < percentile <= 100. Fix: "
            "pass e.g. percentile=99.99."
        )


def _fold(observer: str, old: np.ndarray, new: np.ndarray, momentum: float, n: int) -> np.ndarray:
    """One observer step: ``old`` (over ``n`` batches) and this batch's ``new`` statistics."""
    if observer == "minmax":
        return np.array([min(old[0], new[0]), max(old[1], new[1])])
    if observer == "moving_average":
        return momentum * old + (1.0 - momentum) * new
    return old + (new - old) / (n + 1)  # percentile: running mean over batches


def calibrate(
    model: nn.Module,
    variables: Any,
    batches: Iterable[jax.typing.ArrayLike],
    *,
    observer: str = "minmax",
    momentum: float = 0.9,
    percentile: float = 99.99,
    **apply_kwargs: Any,
) -> dict[str, tuple[float, float]]:
    """Observes the inputs of every matmul / conv op over ``batches`` and returns their ranges.

    Args:
      model: A linen module.
      variables: Its variables (``{"params": ..., ...}``).
      batches: Model inputs (arrays, not ``(x, y)`` pairs), e.g. ``(b["x"] for b in it)``.
      observer: ``"minmax"``, ``"moving_average"`` or ``"percentile"`` (see module doc).
      momentum: Weight of the old value in the moving average.
      percentile: Upper percentile for ``"percentile"`` (the lower one is ``100 - p``).
      **apply_kwargs: Passed to ``model.apply`` (e.g. ``train=False``).

    Returns:
      ``{layer path: (lo, hi)}`` as Python floats, for :func:`fake_quant_apply_fn` and
      :func:`int8_apply_fn`.

    Raises:
      ValueError: No batches, an unknown observer, momentum/percentile out of range, or a
        model without Dense/Conv layers.

    Example:
      >>> ranges = calibrate(model, variables, [x[:100], x[100:200]], observer="percentile")
    """
    _check(observer, momentum, percentile)
    use_pct = observer == "percentile"

    @jax.jit
    def stats(variables: Any, x: jax.Array) -> dict[str, jax.Array]:
        found: dict[str, jax.Array] = {}

        def interceptor(next_fun, args, kwargs, context):
            if is_layer_call(context):
                a = jnp.ravel(args[0]).astype(jnp.float32)
                if use_pct:
                    s = jnp.percentile(a, jnp.array([100.0 - percentile, percentile]))
                else:
                    s = jnp.stack([jnp.min(a), jnp.max(a)])
                path = layer_path(context.module)
                if path in found:  # a layer called twice: cover both calls
                    s = jnp.stack(
                        [jnp.minimum(found[path][0], s[0]), jnp.maximum(found[path][1], s[1])]
                    )
                found[path] = s
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, **apply_kwargs)
        return found

    state: dict[str, np.ndarray] = {}
    n = 0
    for x in batches:
        batch = {k: np.asarray(v, np.float64) for k, v in stats(variables, jnp.asarray(x)).items()}
        if not batch:
            raise ValueError(
                f"calibrate: {type(model).__name__} called no matmul or conv layer, so "
                "there is nothing to calibrate. Fix: pass a model built from nn.Dense/nn.Conv."
            )
        for k, s in batch.items():
            state[k] = s if k not in state else _fold(observer, state[k], s, momentum, n)
        n += 1
    if n == 0:
        raise ValueError(
            "calibrate: batches is empty, so no activation range can be observed. Fix: pass at "
            "least one batch of model inputs, e.g. a few hundred training examples."
        )
    return {k: (float(v[0]), float(v[1])) for k, v in state.items()}
