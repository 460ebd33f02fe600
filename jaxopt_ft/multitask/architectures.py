"""Soft-sharing architectures: trunks that give each task its own mix of shared features.

An architecture is a trunk (``__call__(x, *, train, features_only)``) that returns
``{task: (B, D) features}`` instead of one (B, D) array; `MultiTaskModel`'s heads read their
task's entry, so every weighting method and the per-task gradients work unchanged (the
trunk's parameters are all of ``params["trunk"]``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxopt_ft.multitask.tasks import Task


class MMoE(nn.Module):
    """Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD 2018).

    ``num_experts`` copies of ``expert`` (each with its own parameters, ``expert0`` ...) see
    the input; each task has a softmax gate, a Dense layer on the flattened input, that mixes
    the experts' features: ``z_t = sum_e softmax(W_t x)_e f_e(x)``.

    Attributes:
        expert: a `jaxopt_ft.models` model whose ``features_only`` output is (B, D).
        tasks: the tasks (one gate each).
        num_experts: how many experts, >= 1.

    Raises:
        ValueError: ``num_experts`` < 1, or an expert whose features are not (B, D).
    """

    expert: nn.Module
    tasks: tuple[Task, ...]
    num_experts: int = 3

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features_only: bool = True
    ) -> dict[str, jax.Array]:
        if not features_only:
            raise ValueError("MMoE is a multi-task trunk: call it with features_only=True.")
        if isinstance(self.num_experts, bool) or not (
            isinstance(self.num_experts, int) and self.num_experts >= 1
        ):
            raise ValueError(f"MMoE num_experts must be an integer >= 1, got {self.num_experts!r}.")
        feats = []
        for e in range(self.num_experts):
            f = self.expert.clone(parent=self, name=f"expert{e}")(
                x, train=train, features_only=True
            )
            if f.ndim != 2:
                raise ValueError(
                    f"MMoE experts must give (batch, features) arrays; "
                    f"{type(self.expert).__name__} gives shape {f.shape}. Use a trunk with "
                    "flat features (mlp, cnn, lenet5)."
                )
            feats.append(f)
        stacked = jnp.stack(feats, axis=1)  # (B, E, D)
        flat = x.reshape(x.shape[0], -1)
        out = {}
        for task in self.tasks:
            gate = nn.softmax(nn.Dense(self.num_experts, name=f"gate_{task.name}")(flat))
            out[task.name] = jnp.einsum("be,bed->bd", gate, stacked)
        return out
