"""Pruning counts and picks equal a NumPy transcription of torch.nn.utils.prune.

torch computes the number of units to prune as ``round(amount * n)`` (Python's round, half to
even, of the float64 product; ``_compute_nparams_toprune``) and prunes the ``k`` smallest
``|w|`` (``l1_unstructured`` per tensor, ``global_unstructured`` over the concatenation) or the
``k`` channels with the smallest Ln norm along ``dim`` (``ln_structured``). Weights are
distinct random values, so ties never decide.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import models, prune, tree

AMOUNTS = [k / 40 for k in range(40)]
# 25 weights at 0.5 (torch prunes 12, half up would prune 13), 10 at 0.25 (2, not 3), and
# 190 at 0.15, where the float32 product rounds to the other side of the half.
SHAPES = [(5, 5), (2, 5), (3, 7), (3, 4, 5), (19, 10)]


def torch_count(amount, n):
    """``_compute_nparams_toprune`` for a float amount."""
    return round(amount * n)


def torch_l1_unstructured(w, amount):
    """Keep-mask of ``l1_unstructured``: zero the ``k`` smallest ``|w|``."""
    keep = np.ones(w.size, bool)
    keep[np.argsort(np.abs(w).ravel())[: torch_count(amount, w.size)]] = False
    return keep.reshape(w.shape)


def torch_global_unstructured(ws, amount):
    """Keep-masks of ``global_unstructured(..., L1Unstructured)`` over the tensors ``ws``."""
    keep = torch_l1_unstructured(np.concatenate([w.ravel() for w in ws]), amount)
    return np.split(keep, np.cumsum([w.size for w in ws])[:-1])


def torch_ln_structured(w, amount, order, dim=-1):
    """Per-channel keep vector of ``ln_structured(amount, n=order, dim)``.

    torch keeps the ``n - k`` channels of largest Ln norm; it can prune every channel, which
    a model cannot lose, so (as our structured pruning documents) one channel stays.
    """
    n = w.shape[dim]
    k = min(torch_count(amount, n), n - 1)
    norms = np.linalg.norm(np.moveaxis(w, dim, 0).reshape(n, -1), ord=order, axis=1)
    keep = np.zeros(n, bool)
    keep[np.argsort(-norms)[: n - k]] = True
    return keep


def random_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"l{i}": {"kernel": rng.standard_normal(s).astype(np.float32)} for i, s in enumerate(shapes)
    }


def test_num_removed_is_pythons_round_half_to_even():
    assert prune.num_removed(0.5, 25) == 12
    assert prune.num_removed(0.25, 10) == 2
    assert prune.num_removed(0.5, 3) == 2
    assert prune.num_removed(0.15, 190) == 28  # float32(0.15) * 190 rounds to 29
    assert prune.num_removed(0.9, 10) == 9
    for n in (1, 5, 25, 190):
        assert [prune.num_removed(a, n) for a in AMOUNTS] == [torch_count(a, n) for a in AMOUNTS]


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_scope_equals_l1_unstructured(shape):
    params = random_params([shape])
    w = params["l0"]["kernel"]
    for amount in AMOUNTS:
        masks = prune.compute_masks(params, sparsity=amount)
        np.testing.assert_array_equal(
            masks["l0"]["kernel"], torch_l1_unstructured(w, amount), err_msg=str(amount)
        )


@pytest.mark.parametrize("shapes", [SHAPES[:3], [(5, 5), (15, 11)]], ids=["56", "190"])
def test_global_scope_equals_global_unstructured(shapes):
    params = random_params(shapes, seed=1)
    ws = [params[f"l{i}"]["kernel"] for i in range(len(shapes))]
    for amount in AMOUNTS:
        masks = prune.compute_masks(params, sparsity=amount, scope="global")
        want = torch_global_unstructured(ws, amount)
        for i, keep in enumerate(want):
            np.testing.assert_array_equal(
                np.asarray(masks[f"l{i}"]["kernel"]).ravel(), keep, err_msg=str(amount)
            )


# Dense units (10 and 5) and conv channels (10, 5 and 7) along the kernels' last axis.
STRUCTURED = {
    "lenet300": (models.get("lenet300", hidden=(10, 5)), (1, 6)),
    "cnn": (models.get("cnn", channels=(10, 5, 7)), (1, 40)),
}


@pytest.mark.parametrize("case", list(STRUCTURED))
@pytest.mark.parametrize("norm, order", [("l1", 1), ("l2", 2)])
def test_structured_equals_ln_structured(case, norm, order):
    model, shape = STRUCTURED[case]
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"]
    rng = np.random.default_rng(2)
    flat = {
        p: rng.standard_normal(a.shape).astype(np.float32)
        for p, a in tree.flatten(abstract).items()
    }
    params = tree.unflatten_like(abstract, flat)
    for amount in AMOUNTS:
        masks = tree.flatten(prune.structured_masks(model, params, sparsity=amount, norm=norm))
        for group in prune.unit_groups(model, params):
            # The bias carries the unit mask; kernels also lose the rows they consume.
            keep = torch_ln_structured(flat[f"{group.name}/kernel"], amount, order)
            bias = f"{group.name}/bias"
            np.testing.assert_array_equal(masks[bias], keep, err_msg=f"{bias} {amount}")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_wrap_reaches_the_exact_count_despite_float32(scope):
    # Inside jit the schedule's sparsity is float32: 0.15 * 190 rounds to 29 there, while
    # torch (and one-shot compute_masks) prune round(28.5) = 28.
    params = random_params([(19, 10)], seed=3)
    tx = prune.wrap(optax.sgd(0.0), prune.one_shot(0.15), prune.magnitude(scope=scope))
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    _, state = jax.jit(tx.update)(grads, state, params)
    got = prune.find_masks(state)["l0"]["kernel"]
    np.testing.assert_array_equal(got, torch_l1_unstructured(params["l0"]["kernel"], 0.15))
    assert int(np.sum(~np.asarray(got))) == 28
