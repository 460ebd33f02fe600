"""The MNIST-1D paper's models (Greydanus 2020) at the paper's sizes.

On 40-long inputs with 10 classes: :class:`Logistic` has 410 params, :class:`MLP` 15,210 and
:class:`CNN1D` 5,210, as in the paper's PyTorch code. Widths are fields so that structured
pruning can rebuild a narrower model, and ``width_mult`` scales them for wider variants.

Every model flattens channels-last activations with ``reshape(batch, -1)``, so the head's input
row for position ``p`` and channel ``c`` is ``p * channels + c``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax

from jaxopt_ft.models import _checks, _initializers, _structure


class Logistic(nn.Module):
    """Multinomial logistic regression: one Dense from the flattened input to the logits.

    The Dense is the head; the features are the flattened input itself.

    Attributes:
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    """

    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        _checks.check_positive_int("logistic", "num_classes", self.num_classes)
        _initializers.check("logistic", self.initializer)
        super().__post_init__()

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: the head alone."""
        return ("head",)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or the flattened input when ``features_only``."""
        del train
        init_for = functools.partial(_initializers.layer, self.initializer)
        h = x.reshape(x.shape[0], -1)
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)


class MLP(nn.Module):
    """The paper's MLP: ``h = relu(dense1(x)); h = h + relu(dense2(h)); head(h)``.

    With ``residual=True`` every hidden layer after the first adds its input back, as the
    paper's code does for its second layer, so those layers must keep the previous width.
    Defaults give 40 -> 100 -> 100 -> 10 = 15,210 params.

    Attributes:
        hidden: Width of each hidden layer, named ``dense1``, ``dense2``, ...
        residual: Add a skip connection around every hidden layer after the first.
        width_mult: Multiplies every hidden width (rounded half up, at least 1).
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    """

    hidden: tuple[int, ...] = (100, 100)
    residual: bool = True
    width_mult: float = 1.0
    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        _checks.check_widths("mlp", "hidden", self.hidden)
        _checks.check_width_mult("mlp", self.width_mult)
        _checks.check_positive_int("mlp", "num_classes", self.num_classes)
        _initializers.check("mlp", self.initializer)
        widths = self.effective_hidden
        if self.residual and len(set(widths)) > 1:
            raise ValueError(
                f"mlp.hidden={tuple(self.hidden)!r} mixes widths but residual=True adds each "
                "layer's input to its output, which needs equal widths. Fix: pass equal "
                "widths, e.g. hidden=(64, 64), or residual=False."
            )
        super().__post_init__()

    @property
    def effective_hidden(self) -> tuple[int, ...]:
        """The hidden widths after ``width_mult``: the kernels' output sizes."""
        return _checks.scale_widths(self.hidden, self.width_mult)

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: ``dense1``, ``dense2``, ..., ``head``."""
        return (*(f"dense{i + 1}" for i in range(len(self.hidden))), "head")

    def unit_groups(self) -> tuple[_structure.UnitGroup, ...]:
        """Each hidden layer ``dense{i}``; with ``residual=True`` one group ``hidden``.

        The skip connections add every hidden layer into one stream, so a residual MLP
        removes a unit from all hidden layers at once.
        """
        widths = self.effective_hidden
        names = [f"dense{i + 1}" for i in range(len(widths))]
        if not (self.residual and len(widths) > 1):
            return tuple(_structure.chain(names, widths, "hidden", "head"))
        group = _structure.UnitGroup(
            name="hidden",
            size=widths[0],
            producers=tuple(f"{n}/{leaf}" for n in names for leaf in ("kernel", "bias")),
            stats=(),
            consumers=tuple(f"{n}/kernel" for n in [*names[1:], "head"]),
            field="hidden",
            index=None,
        )
        return (group,)

    def narrowed(self, sizes: Mapping[str, int]) -> MLP:
        """This MLP with groups ``{name: width}`` narrowed (``width_mult`` folded in)."""
        return _structure.narrowed(self, sizes, {"hidden": self.effective_hidden}, width_mult=1.0)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or the last hidden layer when ``features_only``."""
        del train
        init_for = functools.partial(_initializers.layer, self.initializer)
        h = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.effective_hidden):
            out = nn.relu(nn.Dense(width, name=f"dense{i + 1}", **init_for(h.shape[-1]))(h))
            h = h + out if self.residual and i > 0 else out
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)


class CNN1D(nn.Module):
    """The paper's 1-D CNN: three strided Conv1D + ReLU, flatten, Dense head.

    ``conv1`` has kernel 5, later convs kernel 3; all use stride 2 and explicit padding
    ``((1, 1),)`` like PyTorch's ``padding=1``, so a 40-long signal shrinks 40 -> 19 -> 10 -> 5
    and the defaults have 5,210 params. ``channels=(64, 64, 64)`` (or ``width_mult=64 / 25``)
    gives the 28k-param variant.

    Attributes:
        channels: Output channels of ``conv1``, ``conv2``, ... (one conv per entry).
        width_mult: Multiplies every channel count (rounded half up, at least 1).
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    """

    channels: tuple[int, ...] = (25, 25, 25)
    width_mult: float = 1.0
    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        _checks.check_widths("cnn", "channels", self.channels)
        _checks.check_width_mult("cnn", self.width_mult)
        _checks.check_positive_int("cnn", "num_classes", self.num_classes)
        _initializers.check("cnn", self.initializer)
        super().__post_init__()

    @property
    def effective_channels(self) -> tuple[int, ...]:
        """The channel counts after ``width_mult``: the kernels' output sizes."""
        return _checks.scale_widths(self.channels, self.width_mult)

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: ``conv1``, ``conv2``, ..., ``head``."""
        return (*(f"conv{i + 1}" for i in range(len(self.channels))), "head")

    def unit_groups(self) -> tuple[_structure.UnitGroup, ...]:
        """Each conv ``conv{i}``; the last feeds the head, where channel ``c`` owns the
        rows ``p * channels + c``."""
        widths = self.effective_channels
        names = [f"conv{i + 1}" for i in range(len(widths))]
        return tuple(_structure.chain(names, widths, "channels", "head"))

    def narrowed(self, sizes: Mapping[str, int]) -> CNN1D:
        """This CNN with groups ``{name: width}`` narrowed (``width_mult`` folded in)."""
        return _structure.narrowed(
            self, sizes, {"channels": self.effective_channels}, width_mult=1.0
        )

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or the flattened conv features when ``features_only``.

        Args:
            x: Signals of shape (B, L) or (B, L, C).
            train: Unused (no dropout or BatchNorm); kept for a uniform signature.
            features_only: Return the (B, L' * channels[-1]) features instead of logits.
        """
        del train
        init_for = functools.partial(_initializers.layer, self.initializer)
        h = _checks.as_sequence("cnn", x)
        for i, width in enumerate(self.effective_channels):
            kernel = 5 if i == 0 else 3
            init = init_for(kernel * h.shape[-1])
            conv = nn.Conv(width, (kernel,), (2,), ((1, 1),), name=f"conv{i + 1}", **init)
            h = nn.relu(conv(h))
        h = h.reshape(h.shape[0], -1)
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)
