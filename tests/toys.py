"""Tiny models and data shared by the training-loop tests (test_train, test_recipes)."""

import flax.linen as nn
import numpy as np


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, features_only=False):
        h = nn.relu(nn.Dense(16, name="dense1")(x))
        return nn.Dense(3, name="head")(h)


class BN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, features_only=False):
        h = nn.Dense(8, name="dense1")(x)
        h = nn.BatchNorm(use_running_average=not train, name="bn1")(h)
        return nn.Dense(3, name="head")(nn.relu(h))


def data(n=96, seed=0):
    """Five features, three classes decided by the first two."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    label = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, label
