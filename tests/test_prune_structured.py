"""Structured pruning: unit scores, structured masks and compaction of every model that
declares unit groups (the library's own and one defined here)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_ft import models, prune, tree

# (model name, fields, input shape): small enough to init and run in milliseconds.
CASES = {
    "mlp-residual": ("mlp", {"hidden": (12, 12)}, (4, 40)),
    "mlp": ("mlp", {"hidden": (12, 8), "residual": False}, (4, 40)),
    "mlp-width-mult": ("mlp", {"hidden": (8, 8), "width_mult": 1.5}, (4, 40)),
    "lenet300": ("lenet300", {"hidden": (16, 8)}, (4, 8, 8)),
    "cnn": ("cnn", {"channels": (8, 8, 8)}, (4, 40)),
    "lenet5": ("lenet5", {"channels": (4, 8), "hidden": (12, 8)}, (4, 8, 8, 1)),
    "lenet5-no-hidden": ("lenet5", {"channels": (4, 8), "hidden": ()}, (4, 8, 8, 1)),
    "resnet": ("resnet", {"stage_widths": (4, 8), "blocks_per_stage": (2, 1)}, (4, 8, 8, 3)),
    "vit": ("vit", {"hidden": 8, "depth": 2, "num_heads": 2, "mlp_dim": 12}, (4, 8, 8, 1)),
}


class TwoTower(nn.Module):
    """A model the library does not know: two ReLU towers, each read by its own Dense, summed.

    It declares its groups and how to narrow itself, so structured pruning needs no edit.
    """

    width: tuple[int, int] = (6, 4)

    def unit_groups(self):
        return tuple(
            models.UnitGroup(
                name=f"tower{i}",
                size=w,
                producers=(f"tower{i}/kernel", f"tower{i}/bias"),
                stats=(),
                consumers=(f"out{i}/kernel",),
                field="width",
                index=i,
            )
            for i, w in enumerate(self.width)
        )

    def narrowed(self, sizes):
        widths = list(self.width)
        for i in range(2):
            widths[i] = sizes.get(f"tower{i}", widths[i])
        return self.clone(width=tuple(widths))

    @nn.compact
    def __call__(self, x, train=False):
        del train
        towers = [nn.relu(nn.Dense(w, name=f"tower{i}")(x)) for i, w in enumerate(self.width)]
        return sum(nn.Dense(3, name=f"out{i}")(h) for i, h in enumerate(towers))


class NoGroups(TwoTower):
    def unit_groups(self):
        return ()


def random_variables(model, shape, seed=1):
    """Random values for every param and statistic, shaped by an abstract init.

    Real inits have zero biases, unit BN scales and zero means, which would hide a wrongly
    sliced entry; ``eval_shape`` also avoids compiling the initializers.
    """
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        value = rng.standard_normal(leaf.shape).astype(np.float32)
        return jnp.asarray(np.abs(value) + 0.5 if path.endswith("var") else value)

    return tree.map_with_path(fill, dict(abstract))


def random_inputs(shape, seed=2):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("case", list(CASES))
def test_compacted_outputs_equal_masked_outputs(case):
    name, fields, shape = CASES[case]
    model = models.get(name, **fields)
    x = random_inputs(shape)
    variables = random_variables(model, shape)
    params, stats = variables["params"], variables.get("batch_stats")
    masks = prune.structured_masks(model, params, sparsity=0.5)
    masked = {**variables, "params": prune.apply_masks(params, masks)}
    small = prune.compact(model, params, masks, batch_stats=stats)
    small_vars = {"params": small.params}
    if stats is not None:
        small_vars["batch_stats"] = small.batch_stats
    want = jax.jit(model.apply)(masked, x)
    got = jax.jit(small.model.apply)(small_vars, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Pruning changed the function, so the comparison above is not trivially true.
    assert not np.allclose(jax.jit(model.apply)(variables, x), want, atol=1e-3)
    # Every group lost half its units, and the masks' kept count is the new param count.
    for group in prune.unit_groups(model, params):
        assert small.kept[group.name].size == group.size - prune.num_removed(0.5, group.size)
    kept = sum(int(np.sum(m)) for m in jax.tree.leaves(masks))
    assert tree.count_params(small.params) == kept
    assert models.param_count(small.model, shape) == kept


def test_a_model_outside_the_library_compacts_through_its_declaration():
    model = TwoTower()
    x = random_inputs((5, 7))
    params = random_variables(model, (5, 7))["params"]
    masks = prune.structured_masks(model, params, sparsity=[("tower0", 0.5), ("tower1", 0.25)])
    small = prune.compact(model, params, masks)
    assert small.model.width == (3, 3)
    want = model.apply({"params": prune.apply_masks(params, masks)}, x)
    np.testing.assert_allclose(small.model.apply({"params": small.params}, x), want, atol=1e-6)


def test_compacted_widths_and_shapes():
    model = models.get("cnn", channels=(8, 6, 4))
    params = random_variables(model, (2, 40))["params"]
    small = prune.compact(model, params, prune.structured_masks(model, params, sparsity=0.5))
    assert small.model.channels == (4, 3, 2) and small.model.width_mult == 1.0
    assert small.params["conv2"]["kernel"].shape == (3, 4, 3)
    # The head consumes 5 positions x 2 channels after the flatten.
    assert small.params["head"]["kernel"].shape == (10, 10)
    resnet = models.get("resnet", stage_widths=(4, 8))
    variables = random_variables(resnet, (2, 8, 8, 3))
    masks = prune.structured_masks(resnet, variables["params"], sparsity=[("stage2.*", 0.75)])
    small = prune.compact(resnet, variables["params"], masks, batch_stats=variables["batch_stats"])
    assert small.model.inner_widths == (4, 2)
    assert small.batch_stats["stage2_block1"]["bn1"]["mean"].shape == (2,)


def test_unit_scores_l1_l2_and_lowest_units_removed():
    params = {
        "dense1": {"kernel": jnp.array([[3.0, -1.0, 0.0], [4.0, 1.0, 2.0]]), "bias": jnp.ones(3)},
        "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
    }
    model = models.get("lenet300", hidden=(3,))
    groups = prune.unit_groups(model, params)
    l2 = prune.unit_scores(params, groups, norm="l2")["dense1"]
    l1 = prune.unit_scores(params, groups, norm="l1")["dense1"]
    np.testing.assert_allclose(l2, [5.0, np.sqrt(2.0), 2.0])
    np.testing.assert_allclose(l1, [7.0, 2.0, 2.0])
    # k = round(0.5 * 3) = 2. L2 drops units 1 and 2; L1 ties units 1 and 2 -> both go too.
    masks = prune.structured_masks(model, params, sparsity=0.5, norm="l1")
    np.testing.assert_array_equal(masks["dense1"]["bias"], [True, False, False])
    np.testing.assert_array_equal(masks["head"]["kernel"][:, 0], [True, False, False])
    masks = prune.structured_masks(model, params, sparsity=0.3, norm="l1")
    np.testing.assert_array_equal(masks["dense1"]["bias"], [True, False, True])


def test_at_least_one_unit_is_kept():
    model = models.get("lenet300", hidden=(4,))
    params = random_variables(model, (1, 6))["params"]
    masks = prune.structured_masks(model, params, sparsity=0.99)
    assert int(np.sum(masks["dense1"]["bias"])) == 1


def test_compact_ignores_units_with_live_bias():
    """Unstructured masks keep biases, so no unit is dead and nothing may be removed."""
    model = models.get("lenet300", hidden=(6,))
    params = random_variables(model, (1, 5))["params"]
    masks = prune.compute_masks(params, sparsity=0.9)
    small = prune.compact(model, params, masks)
    assert small.model.hidden == (6,)
    x = random_inputs((3, 5))
    np.testing.assert_allclose(
        small.model.apply({"params": small.params}, x),
        model.apply({"params": prune.apply_masks(params, masks)}, x),
        atol=1e-6,
    )


def test_structured_bad_inputs():
    logistic = models.get("logistic")
    params = random_variables(logistic, (1, 40))["params"]
    with pytest.raises(ValueError, match=r"Logistic has no unit_groups\(\) method.*Fix: define"):
        prune.structured_masks(logistic, params, sparsity=0.5)
    with pytest.raises(ValueError, match=r"NoGroups.unit_groups\(\) declares no groups"):
        prune.structured_masks(NoGroups(), {}, sparsity=0.5)
    model = models.get("cnn", channels=(4, 4, 4))
    params = random_variables(model, (1, 40))["params"]
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\)"):
        prune.structured_masks(model, params, sparsity=1.0)
    with pytest.raises(ValueError, match=r"rules matching no parameter: \['dense9'\]"):
        prune.structured_masks(model, params, sparsity=[("dense9", 0.5)])
    with pytest.raises(ValueError, match="Unknown norm 'l3'"):
        prune.structured_masks(model, params, sparsity=0.5, norm="l3")
    other = models.get("cnn", channels=(8, 4, 4))
    with pytest.raises(ValueError, match="params do not belong to this CNN1D"):
        prune.structured_masks(other, params, sparsity=0.5)
    resnet = models.get("resnet", stage_widths=(4,))
    variables = random_variables(resnet, (1, 4, 4, 1))
    masks = prune.dense_masks(variables["params"])
    with pytest.raises(ValueError, match="batch_stats"):
        prune.compact(resnet, variables["params"], masks)
