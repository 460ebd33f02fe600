"""LeNet-300-100 and LeNet-5, the classic pruning benchmarks, for inputs of any size.

Both flatten channels-last activations with ``reshape(batch, -1)``, so a Dense layer's input row
for spatial position ``p`` and channel ``c`` is ``p * channels + c``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax

from jaxopt_ft.models import _checks, _initializers, _structure


class LeNet300(nn.Module):
    """LeNet-300-100: flatten, Dense 300, Dense 100 (ReLU), Dense head.

    Works on any input shape (images or signals): it flattens everything after the batch axis.
    On 28x28x1 inputs the defaults have 266,610 params.

    Attributes:
        hidden: Width of each hidden layer, named ``dense1``, ``dense2``, ...
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    """

    hidden: tuple[int, ...] = (300, 100)
    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        _checks.check_widths("lenet300", "hidden", self.hidden)
        _checks.check_positive_int("lenet300", "num_classes", self.num_classes)
        _initializers.check("lenet300", self.initializer)
        super().__post_init__()

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: ``dense1``, ``dense2``, ..., ``head``."""
        return (*(f"dense{i + 1}" for i in range(len(self.hidden))), "head")

    def unit_groups(self) -> tuple[_structure.UnitGroup, ...]:
        """Each hidden layer ``dense{i}``, consumed by the next one (the last by the head)."""
        names = [f"dense{i + 1}" for i in range(len(self.hidden))]
        return tuple(_structure.chain(names, self.hidden, "hidden", "head"))

    def narrowed(self, sizes: Mapping[str, int]) -> LeNet300:
        """This LeNet-300-100 with groups ``{name: width}`` narrowed."""
        return _structure.narrowed(self, sizes, {"hidden": self.hidden})

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or the last hidden layer when ``features_only``."""
        del train
        init_for = functools.partial(_initializers.layer, self.initializer)
        h = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense{i + 1}", **init_for(h.shape[-1]))(h))
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, Dense 120, Dense 84, head (ReLU).

    Convs use SAME padding and the 2x2/stride-2 max pools pad to a ceiling, so every input size
    works, from 8x8 digits (8 -> 4 -> 2, 64 features into ``dense1``) to 32x32 CIFAR images
    (32 -> 16 -> 8, 1,024 features). The original used VALID convs on 32x32 (400 features);
    SAME is what lets the same network run on tiny inputs. Defaults have 21,386 params on
    8x8x1 digits and 136,886 on 32x32x3.

    Attributes:
        channels: Output channels of ``conv1``, ``conv2``, ... (each conv then a 2x2 max pool).
        hidden: Width of each hidden Dense layer, named ``dense1``, ``dense2``, ...
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    """

    channels: tuple[int, ...] = (6, 16)
    hidden: tuple[int, ...] = (120, 84)
    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        _checks.check_widths("lenet5", "channels", self.channels)
        _checks.check_widths("lenet5", "hidden", self.hidden, allow_empty=True)
        _checks.check_positive_int("lenet5", "num_classes", self.num_classes)
        _initializers.check("lenet5", self.initializer)
        super().__post_init__()

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: the convs, the hidden Dense layers, ``head``."""
        convs = [f"conv{i + 1}" for i in range(len(self.channels))]
        return (*convs, *(f"dense{i + 1}" for i in range(len(self.hidden))), "head")

    def unit_groups(self) -> tuple[_structure.UnitGroup, ...]:
        """Each conv ``conv{i}`` and hidden Dense ``dense{i}``.

        The last conv feeds the first Dense after the flatten, where channel ``c`` owns the
        rows ``p * channels + c``.
        """
        convs = [f"conv{i + 1}" for i in range(len(self.channels))]
        denses = [f"dense{i + 1}" for i in range(len(self.hidden))]
        after_convs = denses[0] if denses else "head"
        groups = _structure.chain(convs, self.channels, "channels", after_convs)
        return tuple(groups + _structure.chain(denses, self.hidden, "hidden", "head"))

    def narrowed(self, sizes: Mapping[str, int]) -> LeNet5:
        """This LeNet-5 with groups ``{name: width}`` narrowed."""
        widths = {"channels": self.channels, "hidden": self.hidden}
        return _structure.narrowed(self, sizes, widths)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or the last hidden layer when ``features_only``.

        Args:
            x: Images of shape (B, H, W, C), or (B, H, W) for grayscale.
            train: Unused (no dropout or BatchNorm); kept for a uniform signature.
            features_only: Return the (B, hidden[-1]) features instead of logits.
        """
        del train
        init_for = functools.partial(_initializers.layer, self.initializer)
        h = _checks.as_images("lenet5", x)
        for i, width in enumerate(self.channels):
            init = init_for(25 * h.shape[-1])
            h = nn.relu(nn.Conv(width, (5, 5), padding="SAME", name=f"conv{i + 1}", **init)(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        h = h.reshape(h.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense{i + 1}", **init_for(h.shape[-1]))(h))
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)
