"""Sparsity schedules, lottery rounds and the ``prune.wrap`` optax wrapper."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import prune, tree

KEY = jax.random.key(0)
PARAMS = {
    "conv": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 8)), "bias": jnp.ones(8)},
    "head": {"kernel": jax.random.normal(jax.random.key(2), (8, 4)), "bias": jnp.zeros(4)},
}


def loss_fn(params, x):
    """A small conv-free regression whose gradient reaches every weight."""
    h = jnp.einsum("bli,lio->bo", x, params["conv"]["kernel"]) + params["conv"]["bias"]
    y = jnp.tanh(h) @ params["head"]["kernel"] + params["head"]["bias"]
    return jnp.mean((y - 1.0) ** 2)


def make_step(tx):
    @jax.jit
    def step(params, opt_state, x):
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def batch(i):
    return jax.random.normal(jax.random.fold_in(KEY, i), (16, 3, 4))


def run(tx, steps, params=PARAMS):
    step, opt_state = make_step(tx), tx.init(params)
    history = []
    for i in range(steps):
        params, opt_state = step(params, opt_state, batch(i))
        history.append((params, opt_state))
    return history


def test_polynomial_values_at_known_steps():
    sched = prune.polynomial(final_sparsity=0.8, begin_step=10, end_step=50, frequency=10)
    # s_t = 0.8 + (0 - 0.8) * (1 - (t - 10) / 40) ** 3
    expected = {0: 0.0, 10: 0.0, 20: 0.4625, 30: 0.7, 40: 0.7875, 50: 0.8, 100: 0.8}
    for t, s in expected.items():
        np.testing.assert_allclose(sched.sparsity(t), s, rtol=1e-6, err_msg=str(t))
    updates = [t for t in range(0, 70) if sched.is_update_step(t)]
    assert updates == [10, 20, 30, 40, 50]


def test_polynomial_off_grid_end_and_initial_sparsity():
    sched = prune.polynomial(
        final_sparsity=0.9, begin_step=0, end_step=25, frequency=10, initial_sparsity=0.5
    )
    assert [t for t in range(40) if sched.is_update_step(t)] == [0, 10, 20, 25]
    np.testing.assert_allclose(sched.sparsity(0), 0.5)
    np.testing.assert_allclose(sched.sparsity(10), 0.9 - 0.4 * 0.6**3, rtol=1e-6)
    np.testing.assert_allclose(sched.sparsity(25), 0.9)


def test_one_shot_and_iterative_schedules():
    sched = prune.one_shot(0.75, step=3)
    assert [t for t in range(10) if sched.is_update_step(t)] == [3]
    np.testing.assert_allclose(sched.sparsity(7), 0.75)
    np.testing.assert_allclose(prune.iterative_sparsities(0.75, rounds=2), [0.5, 0.75])
    np.testing.assert_allclose(prune.iterative_sparsities(0.488, rounds=3), [0.2, 0.36, 0.488])


def test_schedule_bad_inputs():
    with pytest.raises(ValueError, match="final_sparsity=1.0"):
        prune.polynomial(final_sparsity=1.0, begin_step=0, end_step=10)
    with pytest.raises(ValueError, match="end_step=5 is invalid"):
        prune.polynomial(final_sparsity=0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="frequency=0"):
        prune.polynomial(final_sparsity=0.5, begin_step=0, end_step=5, frequency=0)


def test_lottery_round_prunes_trained_and_rewinds():
    trained = {"w": {"kernel": jnp.array([[3.0, -1.0], [0.5, 2.0]])}}
    rewind = {"w": {"kernel": jnp.array([[10.0, 20.0], [30.0, 40.0]])}}
    params, masks = prune.lottery_round(trained, prune.dense_masks(trained), rewind, sparsity=0.5)
    np.testing.assert_array_equal(masks["w"]["kernel"], [[True, False], [False, True]])
    np.testing.assert_array_equal(params["w"]["kernel"], [[10.0, 0.0], [0.0, 40.0]])
    # Round 2: the pruned weights stay pruned even if retraining made them large again.
    trained2 = {"w": {"kernel": jnp.array([[1.0, 9.0], [9.0, 2.0]])}}
    params, masks = prune.lottery_round(trained2, masks, rewind, sparsity=0.75)
    np.testing.assert_array_equal(masks["w"]["kernel"], [[False, False], [False, True]])
    np.testing.assert_array_equal(params["w"]["kernel"], [[0.0, 0.0], [0.0, 40.0]])


def test_pruned_weights_exactly_zero_after_100_adam_steps():
    schedule = prune.polynomial(final_sparsity=0.75, begin_step=10, end_step=60, frequency=10)
    tx = prune.wrap(optax.adam(1e-2, b1=0.9), schedule, prune.magnitude())
    history = run(tx, 100)
    params, opt_state = history[-1]
    masks = prune.find_masks(opt_state)
    prunable = prune.select_prunable(params)
    assert prune.mask_sparsity(masks, prunable) == pytest.approx(0.75)
    for path, m in tree.flatten(masks).items():
        w = np.asarray(tree.flatten(params)[path])
        assert np.all(w[~np.asarray(m)] == 0.0), path
        assert np.all(w[np.asarray(m)] != 0.0), path
    # The kept weights did train: they moved away from their initial values.
    assert not np.allclose(params["head"]["kernel"], PARAMS["head"]["kernel"])


def test_masks_change_only_on_schedule_steps_and_only_shrink():
    schedule = prune.polynomial(
        final_sparsity=0.5, initial_sparsity=0.2, begin_step=2, end_step=8, frequency=3
    )
    tx = prune.wrap(optax.sgd(0.1, momentum=0.9), schedule, prune.magnitude())
    history = run(tx, 12)
    kept = [sum(int(np.sum(m)) for m in jax.tree.leaves(prune.find_masks(s))) for _, s in history]
    # Update i runs with count i; masks change at counts 2, 5, 8 only.
    changed = [i for i in range(1, 12) if kept[i] != kept[i - 1]]
    assert changed == [2, 5, 8]
    assert kept[1] > kept[2] > kept[5] > kept[8] == kept[11]
    for i in range(1, 12):
        before, after = (prune.find_masks(history[j][1]) for j in (i - 1, i))
        for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
            assert not np.any(np.asarray(a) & ~np.asarray(b))  # nothing revived


def test_inner_momentum_stays_zero_at_pruned_weights():
    tx = prune.wrap(
        optax.adam(1e-2), prune.one_shot(0.5), prune.magnitude()
    )  # one-shot at the first update
    params, opt_state = run(tx, 5)[-1]
    masks = prune.find_masks(opt_state)
    adam = prune.find_states(opt_state)[0].inner_state[0]
    for path, m in tree.flatten(masks).items():
        m = np.asarray(m)
        assert np.all(np.asarray(tree.flatten(adam.mu)[path])[~m] == 0.0), path
        assert np.all(np.asarray(tree.flatten(adam.nu)[path])[~m] == 0.0), path


def test_find_masks_inside_a_chain():
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        prune.wrap(optax.adam(1e-2), prune.one_shot(0.5), prune.magnitude()),
    )
    params, opt_state = run(tx, 3)[-1]
    masks = prune.find_masks(opt_state)
    assert prune.mask_sparsity(masks, prune.select_prunable(params)) == pytest.approx(0.5)
    zeros = {p: int(np.sum(np.asarray(w) == 0)) for p, w in tree.flatten(params).items()}
    assert zeros["conv/kernel"] == 48 and zeros["head/kernel"] == 16


def test_tree_map_params_sees_masks_as_param_shaped():
    tx = optax.chain(
        optax.clip(1.0), prune.wrap(optax.adam(1e-2), prune.one_shot(0.5), prune.magnitude())
    )
    state = tx.init(PARAMS)
    shapes = optax.tree_utils.tree_map_params(
        tx, lambda x: "param-shaped", state, transform_non_params=lambda _: "other"
    )
    pstate = prune.find_states(shapes)[0]
    assert set(jax.tree.leaves(pstate.masks)) == {"param-shaped"}
    assert pstate.count == "other"


def test_find_masks_errors():
    with pytest.raises(ValueError, match="found 0"):
        prune.find_masks(optax.adam(1e-3).init(PARAMS))
    two = optax.chain(
        prune.wrap(optax.sgd(1.0), prune.one_shot(0.5), prune.magnitude()),
        prune.wrap(optax.sgd(1.0), prune.one_shot(0.5), prune.magnitude()),
    )
    with pytest.raises(ValueError, match="found 2"):
        prune.find_masks(two.init(PARAMS))


def test_nm_through_wrap_every_group():
    schedule = prune.constant(0.5, begin_step=0, end_step=4, frequency=2)
    tx = prune.wrap(optax.adam(1e-2), schedule, prune.nm(2, 4))
    params, opt_state = run(tx, 6)[-1]
    for path in ("conv/kernel", "head/kernel"):
        m = np.asarray(tree.flatten(prune.find_masks(opt_state))[path])
        groups = np.moveaxis(m, -2, -1).reshape(*np.moveaxis(m, -2, -1).shape[:-1], -1, 4)
        np.testing.assert_array_equal(groups.sum(-1), 2)
        w = np.asarray(tree.flatten(params)[path])
        assert np.all(w[~m] == 0.0)


def test_random_and_saliency_scorers_in_wrap():
    key = jax.random.key(3)
    rand = prune.wrap(optax.sgd(0.1), prune.one_shot(0.5), prune.random(key=key))
    got = prune.find_masks(run(rand, 1)[-1][1])
    # Update t scores with fold_in(key, t).
    want = prune.compute_masks(
        PARAMS, sparsity=0.5, scorer="random", key=jax.random.fold_in(key, 0)
    )
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(x, y)
    sal = prune.wrap(optax.sgd(0.1), prune.one_shot(0.5), prune.saliency())
    got = prune.find_masks(run(sal, 1)[-1][1])
    grads = jax.grad(loss_fn)(PARAMS, batch(0))
    want = prune.compute_masks(PARAMS, sparsity=0.5, scorer="saliency", grads=grads)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(x, y)


def test_fixed_masks_keep_a_lottery_ticket_sparse():
    masks = prune.compute_masks(PARAMS, sparsity=0.8)
    tx = prune.wrap(optax.adam(1e-2), None, prune.fixed(masks))
    params, opt_state = run(tx, 5, params=prune.apply_masks(PARAMS, masks))[-1]
    for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(params), strict=True):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
    for m, g in zip(
        jax.tree.leaves(masks), jax.tree.leaves(prune.find_masks(opt_state)), strict=True
    ):
        np.testing.assert_array_equal(m, g)


def test_data_parallel_sharded_step_matches_single_device():
    mesh = jax.make_mesh((8,), ("data",))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    schedule = prune.polynomial(final_sparsity=0.5, begin_step=1, end_step=3, frequency=1)
    tx = prune.wrap(optax.adam(1e-2), schedule, prune.magnitude(scope="global"))
    step, opt_state = make_step(tx), tx.init(PARAMS)
    params = jax.device_put(PARAMS, replicated)
    sharded_state = jax.device_put(opt_state, replicated)
    p1, s1, p2, s2 = PARAMS, opt_state, params, sharded_state
    for i in range(4):
        x = batch(i)
        p1, s1 = step(p1, s1, x)
        p2, s2 = step(p2, s2, jax.device_put(x, data))
    for a, b in zip(
        jax.tree.leaves(prune.find_masks(s1)), jax.tree.leaves(prune.find_masks(s2)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_wrap_keeps_a_layer_order_selection_given_as_rules():
    # What exclude_first/exclude_last become for wrap: the selection, passed as exact rules.
    chosen = prune.select_prunable(PARAMS, exclude_first=True, layer_order=("conv", "head"))
    rules = [(re.escape(p), v) for p, v in tree.flatten(chosen).items()]
    tx = prune.wrap(optax.sgd(0.1), prune.one_shot(0.5), prune.magnitude(), rules=rules)
    state = tx.init(PARAMS)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, PARAMS), state, PARAMS)
    masks = prune.find_masks(state)
    assert bool(jnp.all(masks["conv"]["kernel"]))
    assert int(jnp.sum(~masks["head"]["kernel"])) == 16  # round(0.5 * 32)


def test_wrap_bad_inputs():
    with pytest.raises(ValueError, match="needs the current params"):
        tx = prune.wrap(optax.sgd(1.0), prune.one_shot(0.5), prune.magnitude())
        tx.update(PARAMS, tx.init(PARAMS))
    with pytest.raises(TypeError, match="is not a SparsitySchedule"):
        prune.wrap(optax.sgd(1.0), 0.5, prune.magnitude())
    with pytest.raises(TypeError, match="is not a Masker"):
        prune.wrap(optax.sgd(1.0), prune.one_shot(0.5), "magnitude")
    with pytest.raises(ValueError, match="prune.random needs a key"):
        prune.random(key=None)
    with pytest.raises(ValueError, match="N=3, M=2"):
        prune.nm(3, 2)
    with pytest.raises(TypeError, match="exclude_first"):  # the selection's job, not wrap's
        prune.wrap(optax.sgd(1.0), prune.one_shot(0.5), prune.magnitude(), exclude_first=True)
    with pytest.raises(ValueError, match=r"rules matching no parameter: \['dense.\*'\]"):
        tx = prune.wrap(
            optax.sgd(1.0), prune.one_shot(0.5), prune.magnitude(), rules=[("dense.*", True)]
        )
        tx.init(PARAMS)
    bad_masks = prune.dense_masks({"conv": PARAMS["conv"]})
    with pytest.raises(ValueError, match=r"missing from masks: \['head/bias', 'head/kernel'\]"):
        prune.wrap(optax.sgd(1.0), None, prune.fixed(bad_masks)).init(PARAMS)


def test_replace_masks_reuses_the_compiled_step():
    # Lottery rounds: one wrap, one compiled step; each round's masks go into the state.
    tx = prune.wrap(optax.sgd(0.1), None, prune.fixed())
    step = make_step(tx)
    params, opt_state = PARAMS, tx.init(PARAMS)
    params, opt_state = step(params, opt_state, batch(0))
    for r, sparsity in enumerate((0.5, 0.75)):
        masks = prune.compute_masks(params, sparsity=sparsity)
        opt_state = prune.replace_masks(opt_state, masks)
        params, opt_state = step(params, opt_state, batch(r + 1))
        for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(params), strict=True):
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
        got = prune.find_masks(opt_state)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(masks), strict=True):
            np.testing.assert_array_equal(a, b)
    assert step._cache_size() == 1
    with pytest.raises(ValueError, match="missing from masks"):
        prune.replace_masks(opt_state, {"conv": masks["conv"]})
