"""A small CIFAR-style ResNet with BatchNorm, sized for CPU experiments.

Parameter tree (defaults, one block per stage)::

    stem_conv, stem_bn,
    stage1_block1: {conv1, bn1, conv2, bn2},
    stage2_block1: {conv1, bn1, conv2, bn2, proj_conv, proj_bn},
    stage3_block1: {...},
    head

BatchNorm statistics live in the ``batch_stats`` collection; call with ``train=True`` and
``mutable=["batch_stats"]`` to update them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_ft.models import _checks, _initializers, _structure

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a skip connection.

    The skip is the identity when shape is kept, else a 1x1 conv + BatchNorm (``proj_conv``,
    ``proj_bn``).

    Attributes:
        width: Output channels (the residual stream's width).
        inner_width: Output channels of ``conv1``, the block's prunable inner width.
        stride: Spatial stride of ``conv1`` and of the projection.
        initializer: ``"flax"`` or ``"torch"`` conv initializers (see :class:`ResNet`).
    """

    width: int
    inner_width: int
    stride: int = 1
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Applies the block to an NHWC batch."""
        init_for = functools.partial(_initializers.layer, self.initializer)
        norm = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
        )
        strides = (self.stride, self.stride)

        def conv(width: int, size: tuple[int, int], strides: tuple, name: str, x: jax.Array):
            init = init_for(size[0] * size[1] * x.shape[-1])  # input channels * kernel area
            return nn.Conv(width, size, strides, use_bias=False, name=name, **init)(x)

        h = conv(self.inner_width, (3, 3), strides, "conv1", x)
        h = nn.relu(norm("bn1")(h))
        h = conv(self.width, (3, 3), (1, 1), "conv2", h)
        h = norm("bn2")(h)
        skip = x
        if self.stride != 1 or x.shape[-1] != self.width:
            skip = conv(self.width, (1, 1), strides, "proj_conv", x)
            skip = norm("proj_bn")(skip)
        return nn.relu(h + skip)


class ResNet(nn.Module):
    """Stem conv + BN, stages of :class:`BasicBlock`, global average pool, Dense head.

    Stage ``s`` (1-based) runs ``blocks_per_stage`` blocks named ``stage{s}_block{b}``; the
    first block of every stage after the first halves the spatial size. Any image size works
    (odd sizes round up through SAME padding).

    Attributes:
        stage_widths: Output channels of each stage (the residual stream's width).
        blocks_per_stage: Blocks in every stage (an int), or one count per stage.
        stem_width: Output channels of ``stem_conv``; None means ``stage_widths[0]``.
        inner_widths: Output channels of every block's ``conv1``, in block order over all
            stages (what channel pruning narrows); None means each block's stage width.
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).
    """

    stage_widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int | tuple[int, ...] = 1
    stem_width: int | None = None
    inner_widths: tuple[int, ...] | None = None
    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        _checks.check_widths("resnet", "stage_widths", self.stage_widths)
        if isinstance(self.blocks_per_stage, int) and not isinstance(self.blocks_per_stage, bool):
            _checks.check_positive_int("resnet", "blocks_per_stage", self.blocks_per_stage)
        else:
            _checks.check_widths("resnet", "blocks_per_stage", self.blocks_per_stage)
            if len(self.blocks_per_stage) != len(self.stage_widths):
                raise ValueError(
                    f"resnet.blocks_per_stage={tuple(self.blocks_per_stage)!r} has "
                    f"{len(self.blocks_per_stage)} entries but stage_widths has "
                    f"{len(self.stage_widths)}. Fix: give one count per stage, or one int."
                )
        if self.stem_width is not None:
            _checks.check_positive_int("resnet", "stem_width", self.stem_width)
        if self.inner_widths is not None:
            _checks.check_widths("resnet", "inner_widths", self.inner_widths)
            total = sum(self.stage_blocks)
            if len(self.inner_widths) != total:
                raise ValueError(
                    f"resnet.inner_widths has {len(self.inner_widths)} entries but the model "
                    f"has {total} blocks. Fix: give one width per block, or None."
                )
        _checks.check_positive_int("resnet", "num_classes", self.num_classes)
        _initializers.check("resnet", self.initializer)
        super().__post_init__()

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """The number of blocks in each stage."""
        if isinstance(self.blocks_per_stage, int):
            return (self.blocks_per_stage,) * len(self.stage_widths)
        return tuple(self.blocks_per_stage)

    @property
    def block_names(self) -> tuple[str, ...]:
        """``stage{s}_block{b}`` for every block, in forward order."""
        return tuple(
            f"stage{s + 1}_block{b + 1}" for s, n in enumerate(self.stage_blocks) for b in range(n)
        )

    @property
    def block_inner_widths(self) -> tuple[int, ...]:
        """The ``conv1`` width of every block, in block order."""
        if self.inner_widths is not None:
            return tuple(self.inner_widths)
        return tuple(
            w for w, n in zip(self.stage_widths, self.stage_blocks, strict=True) for _ in range(n)
        )

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: ``stem_conv``, each block's ``conv1``,
        ``conv2`` and (where the block projects its skip) ``proj_conv``, then ``head``.

        Leaf order sorts ``head`` first and ``stem_conv`` after the stages; this is the order
        in which the layers run.
        """
        order = ["stem_conv"]
        width = self.stage_widths[0] if self.stem_width is None else self.stem_width
        names = iter(self.block_names)
        for s, (stage_width, blocks) in enumerate(
            zip(self.stage_widths, self.stage_blocks, strict=True)
        ):
            for b in range(blocks):
                name = next(names)
                order += [f"{name}/conv1", f"{name}/conv2"]
                if (s > 0 and b == 0) or width != stage_width:
                    order.append(f"{name}/proj_conv")
                width = stage_width
        return (*order, "head")

    def unit_groups(self) -> tuple[_structure.UnitGroup, ...]:
        """The inner channels of every block: ``conv1`` with ``bn1``, consumed by ``conv2``.

        Residual adds tie the stem, ``conv2`` and projection outputs of a stage together, so
        those stream channels are not groups.
        """
        return tuple(
            _structure.UnitGroup(
                name=f"{blk}/conv1",
                size=width,
                producers=(f"{blk}/conv1/kernel", f"{blk}/bn1/scale", f"{blk}/bn1/bias"),
                stats=(f"{blk}/bn1/mean", f"{blk}/bn1/var"),
                consumers=(f"{blk}/conv2/kernel",),
                field="inner_widths",
                index=i,
            )
            for i, (blk, width) in enumerate(
                zip(self.block_names, self.block_inner_widths, strict=True)
            )
        )

    def narrowed(self, sizes: Mapping[str, int]) -> ResNet:
        """This ResNet with blocks' inner widths ``{group name: width}`` narrowed."""
        return _structure.narrowed(self, sizes, {"inner_widths": self.block_inner_widths})

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or pooled features (B, stage_widths[-1]).

        Args:
            x: Images of shape (B, H, W, C), or (B, H, W) for grayscale.
            train: Use batch statistics and update ``batch_stats`` (needs it mutable).
            features_only: Return the globally pooled features instead of logits.
        """
        init_for = functools.partial(_initializers.layer, self.initializer)
        h = _checks.as_images("resnet", x)
        stem_width = self.stage_widths[0] if self.stem_width is None else self.stem_width
        init = init_for(9 * h.shape[-1])
        h = nn.Conv(stem_width, (3, 3), use_bias=False, name="stem_conv", **init)(h)
        h = nn.BatchNorm(
            use_running_average=not train,
            momentum=_BN_MOMENTUM,
            epsilon=_BN_EPSILON,
            name="stem_bn",
        )(h)
        h = nn.relu(h)
        names, inner = iter(self.block_names), iter(self.block_inner_widths)
        for s, (width, blocks) in enumerate(zip(self.stage_widths, self.stage_blocks, strict=True)):
            for b in range(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                block = BasicBlock(width, next(inner), stride, self.initializer, name=next(names))
                h = block(h, train=train)
        h = jnp.mean(h, axis=(1, 2))
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)
