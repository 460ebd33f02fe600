"""Property tests (hypothesis) for rules coverage and compaction equivalence.

Masks (exact sparsity, idempotent apply) live in tests/test_prune.py and quantization (error
bound, zeros preserved, idempotent fake-quant) in tests/test_quant.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_ft import models, prune, tree

NAMES = st.lists(
    st.text(alphabet="abcdefgh", min_size=1, max_size=3), min_size=1, max_size=4, unique=True
)


@st.composite
def trees_and_rules(draw):
    layers = draw(NAMES)
    params = {name: {"kernel": np.zeros(2), "bias": np.zeros(1)} for name in layers}
    chosen = draw(st.lists(st.sampled_from(layers), max_size=len(layers), unique=True))
    rules = [(f"{re.escape(name)}/.*", i) for i, name in enumerate(chosen)]
    return params, rules


@settings(max_examples=60, deadline=None)
@given(trees_and_rules(), st.booleans())
def test_rules_cover_every_leaf_or_raise(case, catch_all):
    params, rules = case
    if catch_all:
        rules = [*rules, (".*", "rest")]
    covered = {f"{name}/{leaf}" for name in params for leaf in ("kernel", "bias")}
    matched = {p for p in covered if any(re.fullmatch(rx, p) for rx, _ in rules)}
    if matched != covered:
        with pytest.raises(ValueError, match="covered by no rule"):
            tree.label_tree(params, rules)
        return
    if (
        catch_all
        and len(rules) > 1
        and not (covered - {p for p in covered for rx, _ in rules[:-1] if re.fullmatch(rx, p)})
    ):
        # the catch-all matches nothing once the named rules cover everything
        with pytest.raises(ValueError, match="matching no parameter"):
            tree.label_tree(params, rules)
        return
    labels = tree.flatten(tree.label_tree(params, rules))
    assert set(labels) == covered
    for path, value in labels.items():
        first = next(v for rx, v in rules if re.fullmatch(rx, path))
        assert value == first  # first full match wins


@settings(max_examples=12, deadline=None)
@given(
    widths=st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 6)),
    sparsity=st.floats(0.1, 0.7),
    seed=st.integers(0, 1000),
)
def test_cnn_compaction_equals_masked_model(widths, sparsity, seed):
    model = models.get("cnn", channels=widths)
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((3, 40)), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed + 1)
    params = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), abstract["params"]
    )
    masks = prune.structured_masks(model, params, sparsity=sparsity)
    small = prune.compact(model, params, masks)
    want = model.apply({"params": prune.apply_masks(params, masks)}, x)
    got = small.model.apply({"params": small.params}, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert tree.count_params(small.params) == sum(int(np.sum(m)) for m in jax.tree.leaves(masks))
