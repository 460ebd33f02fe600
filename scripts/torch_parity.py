"""Compares jaxopt_ft.prune's masks with torch.nn.utils.prune's on the same weights.

torch is not a dependency; run this where it is importable, e.g.::

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    PYTHONPATH=/tmp/torchenv/lib/python3.11/site-packages .venv/bin/python scripts/torch_parity.py

For every amount k/40 (k = 0..39) it checks, on random distinct weights:

- ``l1_unstructured`` per tensor vs ``compute_masks(scope="layer")``;
- ``global_unstructured(L1Unstructured)`` vs ``compute_masks(scope="global")``;
- ``ln_structured(n=1 | 2, dim=0)`` on Linear and Conv1d weights vs ``structured_masks``
  (norm ``"l1"`` | ``"l2"``). torch can remove every channel of a layer where
  ``round(amount * n) == n``; ours keeps one, so those cases are counted apart.

Prints one line per check and exits 1 if any mask differs (0 when torch is missing).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import models, prune, tree

AMOUNTS = [k / 40 for k in range(40)]
# Flax kernel shapes (in, out) / (k, in, out): 25 weights at 0.5 and 10 at 0.25 are the
# half-way cases; 190 at 0.15 rounds the other way in float32.
SHAPES = [(5, 5), (2, 5), (3, 7), (19, 10), (3, 4, 5), (64, 33)]


def holder(kernel: np.ndarray):
    """A torch module whose ``weight`` is ``kernel`` laid out as torch's Linear (out, in) or
    Conv1d (out, in, k) weight: the flax layout (in, out) / (k, in, out) reversed."""
    import torch

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.tensor(np.ascontiguousarray(kernel.T)))
    return module


def flax_layout(mask) -> np.ndarray:
    return mask.numpy().astype(bool).T


def check_unstructured(torch_prune, rng: np.random.Generator) -> int:
    kernels = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    params = {f"l{i}": {"kernel": k} for i, k in enumerate(kernels)}
    bad = 0
    for amount in AMOUNTS:
        layer = prune.compute_masks(params, sparsity=amount)
        for i, kernel in enumerate(kernels):
            want = flax_layout(
                torch_prune.l1_unstructured(holder(kernel), "weight", amount).weight_mask
            )
            bad += not np.array_equal(np.asarray(layer[f"l{i}"]["kernel"]), want)
        glob = prune.compute_masks(params, sparsity=amount, scope="global")
        holders = [holder(k) for k in kernels]
        torch_prune.global_unstructured(
            [(h, "weight") for h in holders],
            pruning_method=torch_prune.L1Unstructured,
            amount=amount,
        )
        for i, h in enumerate(holders):
            bad += not np.array_equal(
                np.asarray(glob[f"l{i}"]["kernel"]), flax_layout(h.weight_mask)
            )
    checks = len(AMOUNTS) * 2 * len(SHAPES)
    print(f"l1_unstructured + global_unstructured: {checks - bad}/{checks} masks equal")
    return bad


def check_structured(torch_prune, rng: np.random.Generator) -> int:
    cases = [
        (models.get("lenet300", hidden=(10, 5, 25)), (1, 6)),
        (models.get("cnn", channels=(10, 5, 7)), (1, 40)),
    ]
    bad = checks = all_pruned = keep_one = 0
    for model, shape in cases:
        abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"]
        flat = {
            p: rng.standard_normal(a.shape).astype(np.float32)
            for p, a in tree.flatten(abstract).items()
        }
        params = tree.unflatten_like(abstract, flat)
        groups = prune.unit_groups(model, params)
        for norm, order in (("l1", 1), ("l2", 2)):
            for amount in AMOUNTS:
                ours = tree.flatten(
                    prune.structured_masks(model, params, sparsity=amount, norm=norm)
                )
                for g in groups:
                    module = holder(flat[f"{g.name}/kernel"])
                    mask = torch_prune.ln_structured(module, "weight", amount, n=order, dim=0)
                    want = mask.weight_mask.reshape(g.size, -1).any(dim=1).numpy()
                    got = np.asarray(ours[f"{g.name}/bias"])  # the units' keep mask
                    if want.any():
                        checks += 1
                        bad += not np.array_equal(got, want)
                    else:
                        all_pruned += 1
                        keep_one += int(got.sum()) == 1
    print(
        f"ln_structured (L1, L2; Linear and Conv1d units): {checks - bad}/{checks} masks equal; "
        f"torch removes every unit in {all_pruned} more cases, where ours keeps one unit in "
        f"{keep_one}"
    )
    return bad + all_pruned - keep_one


def main() -> int:
    try:
        import torch
        from torch.nn.utils import prune as torch_prune
    except ImportError:
        print("torch is not importable: nothing to compare (see this script's docstring).")
        return 0
    print(f"torch {torch.__version__}, amounts k/40 for k in 0..39")
    rng = np.random.default_rng(0)
    bad = check_unstructured(torch_prune, rng) + check_structured(torch_prune, rng)
    print("all masks equal" if not bad else f"{bad} masks differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
