"""A tiny Vision Transformer (pre-LayerNorm encoder) for small images and 1-D signals.

Parameter tree::

    patch_embed, pos_embed, cls_token (pool="cls" only),
    block1: {ln1, attn: {query, key, value, out}, ln2, mlp_dense1, mlp_dense2}, ...,
    final_ln, head

``pos_embed`` has one row per patch (plus one for the class token), so its shape follows the
input size the model is initialised with. The attention projections are ``nn.DenseGeneral``
kernels: query/key/value ``(hidden, heads, head_dim)``, out ``(heads, head_dim, hidden)``.

Structured pruning removes whole attention heads (``block{i}/heads``) and MLP hidden units
(``block{i}/mlp``) per block; :meth:`ViT.narrowed` rebuilds the model with fewer heads (each
keeps ``hidden // num_heads`` dims) and narrower MLPs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_ft.models import _checks, _initializers, _structure

_POOLS = ("cls", "mean")


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``.

    Attributes:
        num_heads: Attention heads.
        mlp_dim: Hidden width of the GELU MLP.
        initializer: ``"flax"`` or ``"torch"`` (see :class:`ViT`).
        head_dim: Width of each head; None splits ``x``'s width evenly among the heads.
    """

    num_heads: int
    mlp_dim: int
    initializer: str = "flax"
    head_dim: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to tokens of shape (B, N, hidden)."""
        init_for = functools.partial(_initializers.layer, self.initializer)
        width = x.shape[-1]
        h = nn.LayerNorm(name="ln1")(x)
        # As torch's nn.Linear: the projections see `width` inputs (the heads' concatenation).
        linear = init_for(width)
        outs = {f"out_{k}": v for k, v in linear.items()}
        head_dim = self.head_dim or width // self.num_heads
        attn = nn.MultiHeadDotProductAttention(
            self.num_heads,
            qkv_features=self.num_heads * head_dim,
            out_features=width,
            deterministic=True,
            name="attn",
            **linear,
            **outs,
        )
        x = x + attn(h)
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_dense1", **linear)(h))
        return x + nn.Dense(width, name="mlp_dense2", **init_for(self.mlp_dim))(h)


class ViT(nn.Module):
    """Patch embedding, learned position embedding, ``depth`` encoder blocks, LayerNorm, head.

    Images are cut into non-overlapping ``patch_size`` squares by a strided conv; height and
    width must be multiples of ``patch_size`` (8x8 digits with patch 2 or 4, 32x32 with 4).
    With ``input_dims=1`` the input is a batch of 1-D signals ``(B, L)`` or ``(B, L, C)`` cut
    into ``patch_size``-sample patches (:class:`Transformer1D`).

    Attributes:
        patch_size: Side of each square patch, in pixels.
        hidden: Token width.
        depth: Number of encoder blocks, named ``block1``, ``block2``, ...
        num_heads: Attention heads per block; must divide ``hidden``.
        mlp_dim: Hidden width of each block's MLP.
        mlp_dims: Hidden width of every block's MLP, in block order (what unit pruning
            narrows); None means ``mlp_dim`` for every block.
        heads: Attention heads of every block, in block order (what head pruning narrows;
            each head keeps ``hidden // num_heads`` dims); None means ``num_heads`` each.
        input_dims: Spatial dimensions of the input: 2 for images, 1 for signals.
        pool: ``"cls"`` reads a learned class token, ``"mean"`` averages the patch tokens.
        num_classes: Number of output logits.
        initializer: ``"flax"`` (flax's layer defaults) or ``"torch"`` (PyTorch's defaults
            for Linear and Conv: weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``;
            the attention projections count as Linear layers, as in ViTs built from
            ``nn.Linear``, not ``nn.MultiheadAttention``'s Xavier in-projection).
    """

    patch_size: int = 4
    hidden: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    mlp_dims: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    input_dims: int = 2
    pool: str = "cls"
    num_classes: int = 10
    initializer: str = "flax"

    def __post_init__(self) -> None:
        for field in ("patch_size", "hidden", "depth", "num_heads", "mlp_dim", "num_classes"):
            _checks.check_positive_int("vit", field, getattr(self, field))
        _initializers.check("vit", self.initializer)
        if self.hidden % self.num_heads:
            raise ValueError(
                f"vit.hidden={self.hidden} does not divide into num_heads={self.num_heads} "
                "heads. Fix: choose num_heads that divides hidden, e.g. hidden=64, num_heads=4."
            )
        for field in ("mlp_dims", "heads"):
            value = getattr(self, field)
            if value is None:
                continue
            _checks.check_widths("vit", field, value)
            if len(value) != self.depth:
                raise ValueError(
                    f"vit.{field} has {len(value)} entries but depth={self.depth}. "
                    f"Fix: give one {'width' if field == 'mlp_dims' else 'head count'} per "
                    "block, or None."
                )
        if self.input_dims not in (1, 2):
            raise ValueError(
                f"vit.input_dims={self.input_dims!r} is invalid. Accepted: 1 (signals) or 2 "
                "(images). Fix: pass input_dims=1 or 2."
            )
        if self.pool not in _POOLS:
            raise ValueError(
                f"vit.pool={self.pool!r} is unknown. Accepted: {', '.join(_POOLS)}. "
                "Fix: pass pool='cls' or pool='mean'."
            )
        super().__post_init__()

    @property
    def block_mlp_dims(self) -> tuple[int, ...]:
        """The MLP hidden width of every block, in block order."""
        return (self.mlp_dim,) * self.depth if self.mlp_dims is None else tuple(self.mlp_dims)

    @property
    def block_heads(self) -> tuple[int, ...]:
        """The attention heads of every block, in block order."""
        return (self.num_heads,) * self.depth if self.heads is None else tuple(self.heads)

    def layer_order(self) -> tuple[str, ...]:
        """The weight layers in forward order: ``patch_embed``, each block's attention
        projections and MLP, then ``head`` (norms and embeddings are not weight layers)."""
        blocks = [
            f"block{i + 1}/{layer}"
            for i in range(self.depth)
            for layer in (
                "attn/query",
                "attn/key",
                "attn/value",
                "attn/out",
                "mlp_dense1",
                "mlp_dense2",
            )
        ]
        return ("patch_embed", *blocks, "head")

    def unit_groups(self) -> tuple[_structure.UnitGroup, ...]:
        """Every block's attention heads (``block{i}/heads``) and MLP hidden units
        (``block{i}/mlp``).

        A head is produced by its slices of the query, key and value kernels (axis 1) and
        biases (axis 0) and consumed by its rows of the output projection (axis 0): with its
        query and key zero its attention is uniform, with its value zero it outputs zero, so
        a masked head adds nothing and removing it changes no output. ``mlp_dense1`` produces
        the MLP units (GELU keeps 0 at 0), ``mlp_dense2`` consumes them. The token width is
        not a group (the residual stream ties every block to it).
        """
        heads = tuple(
            _structure.UnitGroup(
                name=f"block{i + 1}/heads",
                size=n,
                producers=tuple(
                    (f"block{i + 1}/attn/{proj}/{leaf}", axis)
                    for proj in ("query", "key", "value")
                    for leaf, axis in (("kernel", 1), ("bias", 0))
                ),
                stats=(),
                consumers=((f"block{i + 1}/attn/out/kernel", 0),),
                field="heads",
                index=i,
            )
            for i, n in enumerate(self.block_heads)
        )
        return heads + tuple(
            _structure.UnitGroup(
                name=f"block{i + 1}/mlp",
                size=width,
                producers=(f"block{i + 1}/mlp_dense1/kernel", f"block{i + 1}/mlp_dense1/bias"),
                stats=(),
                consumers=(f"block{i + 1}/mlp_dense2/kernel",),
                field="mlp_dims",
                index=i,
            )
            for i, width in enumerate(self.block_mlp_dims)
        )

    def narrowed(self, sizes: Mapping[str, int]) -> ViT:
        """This ViT with blocks' heads and MLP widths ``{group name: size}`` narrowed."""
        widths = {"mlp_dims": self.block_mlp_dims, "heads": self.block_heads}
        return _structure.narrowed(self, sizes, widths)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = False
    ) -> jax.Array:
        """Returns logits (B, num_classes), or the pooled token (B, hidden).

        Args:
            x: Images of shape (B, H, W, C), or (B, H, W) for grayscale; with
                ``input_dims=1`` signals (B, L, C) or (B, L).
            train: Unused (no dropout); kept for a uniform signature.
            features_only: Return the final-LayerNorm pooled features instead of logits.

        Raises:
            ValueError: If a side is not a multiple of ``patch_size``.
        """
        del train
        init_for = functools.partial(_initializers.layer, self.initializer)
        if self.input_dims == 1:
            h = _checks.as_sequence("vit", x)
        else:
            h = _checks.as_images("vit", x)
        sides = h.shape[1:-1]
        if any(side % self.patch_size for side in sides):
            raise ValueError(
                f"vit.patch_size={self.patch_size} does not tile {'x'.join(map(str, sides))} "
                "inputs. Fix: choose a patch_size that divides every side, e.g. 2 or 4 for 8x8 "
                "images, 4 or 5 for length-40 signals."
            )
        p = (self.patch_size,) * self.input_dims
        init = init_for(self.patch_size**self.input_dims * h.shape[-1])
        h = nn.Conv(self.hidden, p, p, padding="VALID", name="patch_embed", **init)(h)
        h = h.reshape(h.shape[0], -1, self.hidden)
        if self.pool == "cls":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.hidden))
            h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, self.hidden)), h], axis=1)
        pos = self.param(
            "pos_embed", nn.initializers.normal(stddev=0.02), (1, h.shape[1], self.hidden)
        )
        h = h + pos
        head_dim = self.hidden // self.num_heads
        for i, (n, mlp_dim) in enumerate(zip(self.block_heads, self.block_mlp_dims, strict=True)):
            h = EncoderBlock(n, mlp_dim, self.initializer, head_dim, name=f"block{i + 1}")(h)
        h = nn.LayerNorm(name="final_ln")(h)
        h = h[:, 0] if self.pool == "cls" else jnp.mean(h, axis=1)
        if features_only:
            return h
        return nn.Dense(self.num_classes, name="head", **init_for(h.shape[-1]))(h)


class Transformer1D(ViT):
    """:class:`ViT` over 1-D signals (``input_dims=1``): ``patch_size``-sample patches.

    The MNIST-1D workload: 40-sample signals cut into 10 patches of 4.
    """

    input_dims: int = 1
    patch_size: int = 4
