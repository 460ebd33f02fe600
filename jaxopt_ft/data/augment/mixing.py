"""Ops that mix two examples and their labels: mixup (any input) and cutmix (images)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_ft.data.augment._core import (
    Augment,
    applied,
    check_p,
    check_range,
    check_rank,
    soft_labels,
)


def mixup(*, num_classes: int, alpha: float = 0.2, p: float = 1.0) -> Augment:
    """``lam * (x, y) + (1 - lam) * (x', y')`` with another example (Zhang et al. 2018).

    ``lam ~ Beta(alpha, alpha)`` per example; labels become soft ``(B, num_classes)``.
    """
    check_range("mixup", "num_classes", num_classes, 2, 10**6, integer=True)
    check_range("mixup", "alpha", alpha, 1e-3, 100.0)
    p = check_p("mixup", p)

    def fn(key, batch):
        x = batch["x"]
        b = x.shape[0]
        k_l, k_perm, k_p = jax.random.split(key, 3)
        lam = jnp.where(applied(k_p, p, b), jax.random.beta(k_l, alpha, alpha, (b,)), 1.0)
        perm = jax.random.permutation(k_perm, b)
        y = soft_labels(batch["label"], num_classes)
        lx = lam.reshape((b,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        new_x = lx * x + (1 - lx) * x[perm]
        new_y = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
        return {**batch, "x": new_x, "label": new_y}

    return fn


def cutmix(*, num_classes: int, alpha: float = 1.0, p: float = 1.0) -> Augment:
    """Pastes a box from another example; the label mixes by area (Yun et al. 2019).

    The box covers ``1 - lam`` of the image, ``lam ~ Beta(alpha, alpha)``, centred uniformly
    and clipped at the border; the label weight is the area actually kept.
    """
    check_range("cutmix", "num_classes", num_classes, 2, 10**6, integer=True)
    check_range("cutmix", "alpha", alpha, 1e-3, 100.0)
    p = check_p("cutmix", p)

    def fn(key, batch):
        x = batch["x"]
        check_rank("cutmix", x, (4,), "images (B, H, W, C)")
        b, h, w, _ = x.shape
        k_l, k_y, k_x, k_perm, k_p = jax.random.split(key, 5)
        lam = jax.random.beta(k_l, alpha, alpha, (b,))
        cut = jnp.sqrt(1.0 - lam)
        bh = jnp.floor(cut * h).astype(jnp.int32)[:, None, None]
        bw = jnp.floor(cut * w).astype(jnp.int32)[:, None, None]
        cy = jax.random.randint(k_y, (b, 1, 1), 0, h)
        cx = jax.random.randint(k_x, (b, 1, 1), 0, w)
        rows = jnp.arange(h)[None, :, None]
        cols = jnp.arange(w)[None, None, :]
        box = (rows >= cy - bh // 2) & (rows < cy - bh // 2 + bh)
        box = box & (cols >= cx - bw // 2) & (cols < cx - bw // 2 + bw)
        box = box & applied(k_p, p, b)[:, None, None]
        perm = jax.random.permutation(k_perm, b)
        kept = 1.0 - jnp.mean(box, axis=(1, 2))
        y = soft_labels(batch["label"], num_classes)
        new_y = kept[:, None] * y + (1 - kept[:, None]) * y[perm]
        return {**batch, "x": jnp.where(box[..., None], x[perm], x), "label": new_y}

    return fn
