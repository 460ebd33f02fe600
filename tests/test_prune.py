"""Masks, scores and allocation (layer / global / ERK / N:M) on hand-made trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxopt_ft import models, prune, tree

# |kernel| in leaf order: dense1 = [0.5, 2, 1, 0.1, 3, 0.7], dense2 = [4, 2.5, 0.3].
PARAMS = {
    "dense1": {
        "kernel": jnp.array([[0.5, -2.0, 1.0], [-0.1, 3.0, -0.7]]),
        "bias": jnp.array([1.0, -1.0, 0.5]),
    },
    "dense2": {"kernel": jnp.array([[4.0], [-2.5], [0.3]]), "bias": jnp.array([0.0])},
}
T, F = True, False


def as_np(tree):
    return jax.tree.map(np.asarray, tree)


def assert_masks(masks, expected):
    """Compares mask leaves path by path; ``expected`` may hold nested lists as leaves."""
    is_list = lambda x: isinstance(x, list)
    exp = tree.flatten(jax.tree.map(lambda x: np.asarray(x, bool), expected, is_leaf=is_list))
    got = tree.flatten(masks)
    assert list(got) == list(exp)
    for path, value in got.items():
        np.testing.assert_array_equal(np.asarray(value), exp[path], err_msg=path)


def test_select_prunable_default_kernels_only():
    assert prune.select_prunable(PARAMS) == {
        "dense1": {"bias": False, "kernel": True},
        "dense2": {"bias": False, "kernel": True},
    }


def test_select_prunable_excludes_first_and_last_in_layer_order():
    order = ("dense1", "dense2")
    first = prune.select_prunable(PARAMS, exclude_first=True, layer_order=order)
    assert prune.prunable_paths(first) == ["dense2/kernel"]
    last = prune.select_prunable(PARAMS, exclude_last=True, layer_order=order)
    assert prune.prunable_paths(last) == ["dense1/kernel"]
    # The declared order decides, not the sorted leaf order; a layer's biases go with it.
    both = prune.select_prunable(
        PARAMS, [(".*", True)], exclude_first=True, layer_order=order[::-1]
    )
    assert prune.prunable_paths(both) == ["dense1/bias", "dense1/kernel"]


def test_resnet_exclude_first_and_last_are_stem_and_head():
    model = models.get("resnet", stage_widths=(4, 8))
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    assert prune.prunable_paths(prune.select_prunable(params))[0] == "head/kernel"  # sorted
    chosen = prune.select_prunable(
        params, exclude_first=True, exclude_last=True, layer_order=model.layer_order()
    )
    kernels = [p for p in tree.paths(params) if p.endswith("kernel")]
    assert set(kernels) - set(prune.prunable_paths(chosen)) == {"stem_conv/kernel", "head/kernel"}


def test_exclude_without_layer_order_or_uncovered_leaves_are_value_errors():
    with pytest.raises(ValueError, match=r"need the model's forward layer order.*Fix: pass"):
        prune.select_prunable(PARAMS, exclude_first=True)
    with pytest.raises(ValueError, match=r"does not cover the prunable leaves \['dense2/kernel'\]"):
        prune.select_prunable(PARAMS, exclude_last=True, layer_order=("dense1",))
    with pytest.raises(TypeError, match="sequence of layer paths"):
        prune.select_prunable(PARAMS, exclude_last=True, layer_order="dense1")


def test_select_prunable_rules():
    got = prune.select_prunable(PARAMS, [(r"dense2/.*", True)])
    assert prune.prunable_paths(got) == ["dense2/bias", "dense2/kernel"]


def test_rule_matching_nothing_is_a_value_error():
    with pytest.raises(ValueError, match=r"rules matching no parameter: \['conv.\*'\]"):
        prune.select_prunable(PARAMS, [("conv.*", True)])


def test_no_prunable_leaf_is_a_value_error():
    with pytest.raises(ValueError, match="No prunable parameters"):
        prune.select_prunable({"bias": jnp.ones(3)})


def test_layer_masks_exact():
    masks = prune.compute_masks(PARAMS, sparsity=0.5)
    # dense1: k = round(3) = 3 drops 0.1, 0.5, 0.7; dense2: k = round(1.5) = 2 drops 0.3, 2.5.
    assert_masks(
        masks,
        {
            "dense1": {"bias": [T, T, T], "kernel": [[F, T, T], [F, T, F]]},
            "dense2": {"bias": [T], "kernel": [[T], [F], [F]]},
        },
    )


def test_global_masks_exact():
    masks = prune.compute_masks(PARAMS, sparsity=0.5, scope="global")
    # One threshold over 9 weights: k = round(4.5) = 4 (half to even) drops 0.1, 0.3, 0.5, 0.7.
    assert_masks(
        masks,
        {
            "dense1": {"bias": [T, T, T], "kernel": [[F, T, T], [F, T, F]]},
            "dense2": {"bias": [T], "kernel": [[T], [T], [F]]},
        },
    )


def test_ties_break_by_index_within_and_across_leaves():
    tied = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2, 2))}}
    layer = prune.compute_masks(tied, sparsity=0.5)
    assert_masks(layer, {"a": {"kernel": [[F, F], [T, T]]}, "b": {"kernel": [[F, F], [T, T]]}})
    glob = prune.compute_masks(tied, sparsity=0.5, scope="global")
    assert_masks(glob, {"a": {"kernel": [[F, F], [F, F]]}, "b": {"kernel": [[T, T], [T, T]]}})


def test_num_removed_rounds_half_to_even():
    assert prune.num_removed(0.5, 3) == 2
    assert prune.num_removed(0.5, 5) == 2
    assert prune.num_removed(0.25, 10) == 2
    assert prune.num_removed(0.9, 10) == 9
    assert prune.num_removed(0.0, 10) == 0


def test_apply_masks_zeros_pruned_entries_only():
    masks = prune.compute_masks(PARAMS, sparsity=0.5)
    pruned = prune.apply_masks(PARAMS, masks)
    np.testing.assert_array_equal(pruned["dense1"]["kernel"], [[0.0, -2.0, 1.0], [0.0, 3.0, 0.0]])
    np.testing.assert_array_equal(pruned["dense1"]["bias"], PARAMS["dense1"]["bias"])


def test_erk_densities_cap_and_redistribute():
    params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((10, 10))}}
    # raw: a = 4/4 = 1, b = 20/100 = 0.2; 52 of 104 kept. Uncapped eps = 52/24 gives a > 1, so
    # a is capped at 1 and b gets (52 - 4) / 100 = 0.48.
    dens = prune.layer_densities(params, sparsity=0.5, distribution="erk")
    assert dens == pytest.approx({"a/kernel": 1.0, "b/kernel": 0.48})


def test_erk_proportional_and_exact_total():
    params = {"a": {"kernel": jnp.ones((3, 4))}, "b": {"kernel": jnp.ones((4, 2))}}
    # raw a = 7/12, b = 6/8; 10 of 20 kept: eps = 10/13, kept 5.38 and 4.62 -> 5 and 5.
    dens = prune.layer_densities(params, sparsity=0.5, distribution="erk")
    assert dens == pytest.approx({"a/kernel": 5 / 12, "b/kernel": 5 / 8})
    masks = prune.compute_masks(params, sparsity=0.5, distribution="erk")
    assert int(sum(np.sum(m) for m in jax.tree.leaves(masks))) == 10


def test_traced_sparsity_matches_concrete():
    scores = prune.magnitude_scores(PARAMS)
    prunable = prune.select_prunable(PARAMS)
    for scope, dist in [("layer", "uniform"), ("layer", "erk"), ("global", "uniform")]:
        kw = dict(prunable=prunable, scope=scope, distribution=dist)
        fn = jax.jit(lambda s, kw=kw: prune.masks_from_scores(scores, sparsity=s, **kw))
        for s in (0.0, 0.3, 0.5, 0.8):
            assert_masks(
                fn(jnp.float32(s)), as_np(prune.masks_from_scores(scores, sparsity=s, **kw))
            )


def test_random_scores_depend_on_key_only():
    a = prune.compute_masks(PARAMS, sparsity=0.5, scorer="random", key=jax.random.key(0))
    b = prune.compute_masks(PARAMS, sparsity=0.5, scorer="random", key=jax.random.key(0))
    assert_masks(a, as_np(b))
    with pytest.raises(ValueError, match="needs a key"):
        prune.compute_masks(PARAMS, sparsity=0.5, scorer="random")


def test_saliency_and_snip_scores():
    grads = jax.tree.map(lambda w: jnp.full_like(w, 2.0), PARAMS)
    sal = prune.saliency_scores(PARAMS, grads)
    np.testing.assert_allclose(sal["dense2"]["kernel"], [[8.0], [5.0], [0.6]])

    def loss(p, x):
        return jnp.sum(x @ p["dense1"]["kernel"])

    x = jnp.array([[1.0, 2.0]])  # d loss / d kernel[i, j] = x[i]
    snip = prune.snip_scores(loss, {"dense1": {"kernel": PARAMS["dense1"]["kernel"]}}, x)
    np.testing.assert_allclose(snip["dense1"]["kernel"], [[0.5, 2.0, 1.0], [0.2, 6.0, 1.4]])
    masks = prune.compute_masks(PARAMS, sparsity=0.5, scorer="saliency", grads=grads)
    assert_masks(masks, as_np(prune.compute_masks(PARAMS, sparsity=0.5)))


def test_previous_masks_stay_pruned():
    old = {
        "dense1": {"bias": jnp.ones(3, bool), "kernel": jnp.array([[T, F, T], [T, T, T]])},
        "dense2": {"bias": jnp.ones(1, bool), "kernel": jnp.ones((3, 1), bool)},
    }
    masks = prune.compute_masks(PARAMS, sparsity=0.5, masks=old)
    # |2.0| would survive on magnitude, but it was pruned already: 0.1 and 0.5 go with it.
    np.testing.assert_array_equal(masks["dense1"]["kernel"], [[F, F, T], [F, T, T]])


def test_nm_pattern_every_group():
    w = jax.random.normal(jax.random.key(0), (3, 8, 8, 5))  # Conv (kh, kw, in, out)
    params = {"conv": {"kernel": w}, "dense": {"kernel": jnp.arange(16.0).reshape(8, 2) - 7}}
    masks = prune.compute_masks(params, nm=(2, 4))
    # Groups of 4 consecutive inputs (axis 2) for every (kh, kw, out): exactly 2 kept, the
    # two largest |w| of the group.
    groups = np.moveaxis(np.asarray(masks["conv"]["kernel"]), 2, -1).reshape(3, 8, 5, 2, 4)
    np.testing.assert_array_equal(groups.sum(-1), 2)
    mags = np.moveaxis(np.abs(np.asarray(w)), 2, -1).reshape(3, 8, 5, 2, 4)
    kept_mags = np.sort(np.where(groups, mags, -1.0), -1)[..., 2:]
    np.testing.assert_array_equal(kept_mags, np.sort(mags, -1)[..., 2:])
    # Dense (8, 2): column 0 = [-7, -5, ..., 7]: per 4 inputs keep the two largest |w|.
    np.testing.assert_array_equal(masks["dense"]["kernel"][:, 0], [T, T, F, F, F, F, T, T])


def test_nm_bad_inputs():
    with pytest.raises(ValueError, match=r"1 <= N <= M .* N=5, M=4"):
        prune.compute_masks(PARAMS, nm=(5, 4))
    with pytest.raises(ValueError, match=r"multiple of 4.*'dense1/kernel': \(2, 3\)"):
        prune.compute_masks(PARAMS, nm=(2, 4))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_sparsity_outside_unit_interval_is_value_error(bad):
    with pytest.raises(ValueError, match=r"sparsity=.* must be a number in \[0, 1\)"):
        prune.compute_masks(PARAMS, sparsity=bad)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune.one_shot(bad)


def test_bad_scope_distribution_scorer():
    with pytest.raises(ValueError, match="Unknown scope 'net'"):
        prune.compute_masks(PARAMS, sparsity=0.5, scope="net")
    with pytest.raises(ValueError, match="Unknown distribution"):
        prune.compute_masks(PARAMS, sparsity=0.5, distribution="gaussian")
    with pytest.raises(ValueError, match="scope='global'"):
        prune.compute_masks(PARAMS, sparsity=0.5, scope="global", distribution="erk")
    with pytest.raises(ValueError, match="Unknown scorer 'taylor'"):
        prune.compute_masks(PARAMS, sparsity=0.5, scorer="taylor")
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        prune.compute_masks(PARAMS)


def test_public_names_are_the_accepted_values():
    for scope in prune.SCOPES:
        prune.check_scope(scope, "uniform")
    for distribution in prune.DISTRIBUTIONS:
        prune.check_scope("layer", distribution)
    with pytest.raises(ValueError, match=r"accepted: \['layer', 'global'\]"):
        prune.check_scope("net", "uniform")
    assert prune.SCORERS == ("magnitude", "random", "saliency")
    assert prune.NORMS == ("l1", "l2")
    assert {"SCOPES", "DISTRIBUTIONS", "SCORERS", "NORMS", "check_scope"} <= set(prune.__all__)
    assert not hasattr(prune, "group_names")


def test_masks_with_different_structure_are_value_errors():
    masks = prune.dense_masks(PARAMS)
    del masks["dense2"]["bias"]
    with pytest.raises(ValueError, match=r"missing from masks: \['dense2/bias'\]"):
        prune.apply_masks(PARAMS, masks)
    masks = prune.dense_masks(PARAMS)
    masks["dense2"]["bias"] = None
    with pytest.raises(ValueError, match="dense2/bias"):
        prune.apply_masks(PARAMS, masks)
    masks = prune.dense_masks(PARAMS)
    masks["dense1"]["kernel"] = jnp.ones((3, 2), bool)
    with pytest.raises(ValueError, match=r"'dense1/kernel': \(\(3, 2\), \(2, 3\)\)"):
        prune.apply_masks(PARAMS, masks)
    masks = prune.dense_masks(PARAMS)
    masks["dense1"]["kernel"] = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="must be bool"):
        prune.apply_masks(PARAMS, masks)


KERNEL_SHAPES = st.lists(
    st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple), min_size=1, max_size=3
)


@settings(max_examples=25, deadline=None)
@given(
    shapes=KERNEL_SHAPES,
    sparsity=st.floats(0.0, 0.99),
    how=st.sampled_from([("layer", "uniform"), ("global", "uniform"), ("layer", "erk")]),
    seed=st.integers(0, 2**16),
)
def test_exact_sparsity_property(shapes, sparsity, how, seed):
    rng = np.random.default_rng(seed)
    params = {f"l{i}": {"kernel": rng.standard_normal(s, np.float32)} for i, s in enumerate(shapes)}
    masks = prune.compute_masks(params, sparsity=sparsity, scope=how[0], distribution=how[1])
    removed = {p: int(np.size(m) - np.sum(m)) for p, m in tree.flatten(masks).items()}
    sizes = {p: int(np.size(x)) for p, x in tree.flatten(params).items()}
    if how == ("layer", "uniform"):
        assert removed == {p: round(sparsity * n) for p, n in sizes.items()}
    else:
        assert sum(removed.values()) == round(sparsity * sum(sizes.values()))


@settings(max_examples=15, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_apply_masks_idempotent_property(sparsity, seed):
    params = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(seed), x.shape), PARAMS)
    masks = prune.compute_masks(params, sparsity=sparsity, scope="global")
    once = prune.apply_masks(params, masks)
    twice = prune.apply_masks(once, masks)
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(twice), strict=True):
        np.testing.assert_array_equal(a, b)
    again = prune.compute_masks(once, sparsity=sparsity, scope="global")
    assert_masks(again, as_np(masks))
