"""Weight initializers by convention: flax's layer defaults, or PyTorch's.

PyTorch initializes ``nn.Linear`` and ``nn.Conv*`` weights with ``kaiming_uniform_(a=sqrt(5))``
and their biases uniformly, both of which come to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with
``fan_in = in_features * prod(kernel_size)``. ``initializer="torch"`` gives every Dense and
Conv that distribution, so a paper's PyTorch setup replicates; norms and embeddings keep
their own initializers either way.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

INITIALIZERS = ("flax", "torch")


def check(model: str, value: object) -> None:
    """Raises ValueError unless ``value`` is one of :data:`INITIALIZERS`."""
    if not isinstance(value, str) or value not in INITIALIZERS:
        raise ValueError(
            f"{model}.initializer={value!r} is unknown. Accepted: {', '.join(INITIALIZERS)}. "
            "Fix: pass initializer='flax' (flax's defaults) or 'torch' (PyTorch's)."
        )


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, PyTorch's Linear/Conv weight and bias init."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def layer(initializer: str, fan_in: int) -> dict[str, nn.initializers.Initializer]:
    """``kernel_init``/``bias_init`` keywords for a Dense or Conv with ``fan_in`` inputs per
    output (``in_features * prod(kernel_size)``); none for ``"flax"`` (its own defaults)."""
    if initializer == "flax":
        return {}
    uniform = torch_uniform(fan_in)
    return {"kernel_init": uniform, "bias_init": uniform}
