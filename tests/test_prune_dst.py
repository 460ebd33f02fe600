"""Dynamic sparse training (SET, RigL), static sparse and STE pruning, against NumPy references
of the published rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import checkpoint, prune, tree

KEY = jax.random.key(0)
PARAMS = {
    "conv": {"kernel": jax.random.normal(jax.random.key(1), (3, 4, 8)), "bias": jnp.ones(8)},
    "head": {"kernel": jax.random.normal(jax.random.key(2), (8, 4)), "bias": jnp.zeros(4)},
}
KERNELS = ("conv/kernel", "head/kernel")


def loss_fn(params, x):
    h = jnp.einsum("bli,lio->bo", x, params["conv"]["kernel"]) + params["conv"]["bias"]
    y = jnp.tanh(h) @ params["head"]["kernel"] + params["head"]["bias"]
    return jnp.mean((y - 1.0) ** 2)


def batch(i):
    return jax.random.normal(jax.random.fold_in(KEY, i), (16, 3, 4))


def make_step(tx):
    @jax.jit
    def step(params, opt_state, x):
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads

    return step


def start(tx, params=PARAMS):
    opt_state = tx.init(params)
    return prune.apply_masks(params, prune.find_masks(opt_state)), opt_state


def np_drop_grow(mask, weights, grow_scores, fraction):
    """Evci et al. 2020, Algorithm 1, for one layer: k = floor(f * active); drop the k active
    weights of least |w|; regrow the k best grow scores among the inactive after the drop.
    k in float32 as the RigL code computes it (0.9 * 10 is 9 there, 8 in float64)."""
    m, w, g = (np.asarray(a).ravel() for a in (mask, weights, grow_scores))
    k = int(np.floor(np.float32(fraction) * np.float32(m.sum())))
    active = np.flatnonzero(m)
    order = active[np.argsort(np.abs(w[active]), kind="stable")]
    kept = m.copy()
    kept[order[:k]] = False
    inactive = np.flatnonzero(~kept)
    best = inactive[np.argsort(-np.abs(g[inactive]), kind="stable")]
    new = kept.copy()
    new[best[:k]] = True
    return new.reshape(np.shape(mask))


def test_drop_and_grow_on_a_hand_made_layer():
    w = np.array([[0.5, -0.1, 0.0, 2.0], [0.0, -3.0, 0.2, 0.0]], np.float32)
    m = w != 0
    g = np.array([[9.0, 0.0, 4.0, 1.0], [-5.0, 0.0, 0.3, 6.0]], np.float32)
    got = prune.drop_and_grow(jnp.asarray(m), jnp.abs(jnp.asarray(w)), jnp.abs(g), 0.4)
    # 5 active, k = floor(0.4 * 5) = 2: drop -0.1 and 0.2, regrow |g| = 6 and 5 (not 4, 0.3).
    want = np.array([[True, False, False, True], [True, True, False, True]])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, np_drop_grow(m, w, g, 0.4))
    rng = np.random.default_rng(0)
    for f in (0.1, 0.3, 0.5, 0.9):
        w = rng.normal(size=(6, 7)).astype(np.float32)
        m = rng.random((6, 7)) < 0.3
        g = rng.normal(size=(6, 7)).astype(np.float32)
        got = prune.drop_and_grow(jnp.asarray(m), jnp.abs(jnp.asarray(w)), jnp.abs(g), f)
        np.testing.assert_array_equal(got, np_drop_grow(m, w, g, f), err_msg=str(f))
        assert int(np.sum(got)) == int(m.sum())


def test_cosine_update_fraction_follows_rigl():
    sched = prune.cosine(0.9, fraction=0.3, frequency=10, end_step=100, begin_step=20)
    for t in (0, 20, 30, 45, 60, 99, 100, 150):
        tt = np.clip(t, 20, 100) - 20
        want = 0.3 / 2 * (1 + np.cos(np.pi * tt / 80))
        np.testing.assert_allclose(sched.update_fraction(t), want, rtol=1e-5, atol=1e-7)
    assert [t for t in range(120) if sched.is_update_step(t)] == list(range(20, 101, 10))
    np.testing.assert_allclose(sched.sparsity(55), 0.9)


def test_rigl_update_step_matches_reference_and_grows_zeros():
    sched = prune.cosine(0.5, fraction=0.3, frequency=2, end_step=8)
    tx = prune.wrap(optax.adam(1e-2), sched, prune.rigl(key=KEY, distribution="uniform"))
    params, opt_state = start(tx)
    step = make_step(tx)
    for i in range(5):
        old = tree.flatten(prune.find_masks(opt_state))
        before = tree.flatten(params)
        params, opt_state, grads = step(params, opt_state, batch(i))
        new, g = tree.flatten(prune.find_masks(opt_state)), tree.flatten(grads)
        after = tree.flatten(params)
        fraction = 0.3 / 2 * (1 + np.cos(np.pi * i / 8)) if i % 2 == 0 else 0.0
        adam = prune.find_states(opt_state)[0].inner_state[0]
        for p in KERNELS:
            want = np_drop_grow(old[p], before[p], g[p], fraction)
            np.testing.assert_array_equal(new[p], want, err_msg=f"{p} step {i}")
            assert int(np.sum(new[p])) == int(np.sum(old[p])) == np.size(want) // 2
            grown = np.asarray(new[p]) & ~np.asarray(old[p])
            assert np.all(np.asarray(after[p])[grown] == 0.0)  # regrown weights start at 0
            assert np.all(np.asarray(tree.flatten(adam.mu)[p])[grown] == 0.0)
            assert np.all(np.asarray(after[p])[~np.asarray(new[p])] == 0.0)
        if i == 0:
            assert any(np.any(np.asarray(new[p]) != np.asarray(old[p])) for p in KERNELS)


def test_set_keeps_counts_and_regrows_at_random():
    sched = prune.constant(0.75, fraction=0.5, frequency=1, end_step=10)
    tx = prune.wrap(optax.sgd(0.1, momentum=0.9), sched, prune.set_(key=KEY))
    params, opt_state = start(tx)
    init = tree.flatten(prune.find_masks(opt_state))
    counts = {p: int(np.sum(init[p])) for p in KERNELS}
    dens = prune.layer_densities(PARAMS, sparsity=0.75, distribution="erk")
    assert counts == {p: round(dens[p] * np.size(init[p])) for p in KERNELS}  # ERK start
    step, changed = make_step(tx), 0
    for i in range(4):
        old = tree.flatten(prune.find_masks(opt_state))
        before = tree.flatten(params)
        params, opt_state, _ = step(params, opt_state, batch(i))
        new = tree.flatten(prune.find_masks(opt_state))
        for p in KERNELS:
            assert int(np.sum(new[p])) == counts[p]
            # The dropped ones are exactly the smallest active magnitudes (k = floor(.5 n)).
            m = np.asarray(old[p]).ravel()
            k = int(np.floor(0.5 * m.sum()))
            active = np.flatnonzero(m)
            smallest = active[np.argsort(np.abs(np.asarray(before[p]).ravel()[active]))[:k]]
            survivors = m & np.asarray(new[p]).ravel()
            assert survivors.sum() >= m.sum() - k
            big = np.setdiff1d(active, smallest)
            assert np.all(np.asarray(new[p]).ravel()[big])
            changed += int(np.sum(np.asarray(new[p]) != np.asarray(old[p])))
            assert np.all(np.asarray(tree.flatten(params)[p])[~np.asarray(new[p])] == 0.0)
    assert changed > 0


def test_static_mask_is_random_erk_and_never_changes():
    tx = prune.wrap(optax.adam(1e-2), prune.constant(0.8), prune.static(key=KEY))
    params, opt_state = start(tx)
    first = prune.find_masks(opt_state)
    want = prune.compute_masks(PARAMS, sparsity=0.8, scorer="random", key=KEY, distribution="erk")
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    step = make_step(tx)
    for i in range(3):
        params, opt_state, _ = step(params, opt_state, batch(i))
    last = prune.find_masks(opt_state)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(last), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ste_forward_is_masked_while_dense_weights_move():
    apply = prune.ste_apply_fn(lambda v, x: loss_fn(v["params"], x), sparsity=0.5)
    step = jax.jit(
        lambda p, x: optax.apply_updates(
            p, jax.tree.map(lambda g: -0.1 * g, jax.grad(lambda q: apply({"params": q}, x))(p))
        )
    )
    params = PARAMS
    for i in range(3):
        x = batch(i)
        masks = prune.compute_masks(params, sparsity=0.5)  # top-k of the current weights
        masked = prune.apply_masks(params, masks)
        np.testing.assert_allclose(apply({"params": params}, x), loss_fn(masked, x), rtol=1e-6)
        # The dense weights move by the masked forward's gradient, pruned ones included.
        want = jax.tree.map(lambda w, g: w - 0.1 * g, params, jax.grad(loss_fn)(masked, x))
        new = step(params, x)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        pruned = ~np.asarray(masks["head"]["kernel"])
        assert np.all(np.asarray(new["head"]["kernel"] != params["head"]["kernel"])[pruned])
        params = new


@pytest.mark.parametrize(
    "inner",
    [
        optax.sgd(0.1),
        optax.sgd(0.1, momentum=0.9, nesterov=True),
        optax.adam(1e-2),
        optax.adamw(1e-2, weight_decay=0.1),
        optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(1e-2)),
    ],
    ids=["sgd", "nesterov", "adam", "adamw", "clip_rmsprop"],
)
def test_masked_weights_stay_exact_zeros_under_rigl(inner):
    sched = prune.cosine(0.8, fraction=0.3, frequency=2, end_step=6)
    tx = prune.wrap(inner, sched, prune.rigl(key=KEY))
    params, opt_state = start(tx)
    step = make_step(tx)
    for i in range(6):
        params, opt_state, _ = step(params, opt_state, batch(i))
        masks = tree.flatten(prune.find_masks(opt_state))
        for p, w in tree.flatten(params).items():
            assert np.all(np.asarray(w)[~np.asarray(masks[p])] == 0.0), (p, i)


def test_checkpoint_resume_mid_run_is_exact(tmp_path):
    sched = prune.cosine(0.8, fraction=0.3, frequency=2, end_step=8)
    tx = prune.wrap(optax.adam(1e-2), sched, prune.set_(key=KEY))
    params, opt_state = start(tx)
    step = make_step(tx)
    full = (params, opt_state)
    for i in range(6):
        full = step(*full, batch(i))[:2]
        if i == 2:
            ck = checkpoint.Checkpointer(tmp_path / "ck")
            ck.save(3, {"params": full[0], "opt_state": full[1]})
    _, restored = checkpoint.Checkpointer(tmp_path / "ck").restore(
        {"params": params, "opt_state": opt_state}
    )
    resumed = (restored["params"], restored["opt_state"])
    for i in range(3, 6):
        resumed = step(*resumed, batch(i))[:2]
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dst_bad_inputs():
    for bad in (0.0, 1.0, -0.2, 1.5, "0.3", True):
        with pytest.raises(ValueError, match=r"update fraction=.* must be a number in \(0, 1\)"):
            prune.cosine(0.9, fraction=bad, frequency=10, end_step=100)
        with pytest.raises(ValueError, match=r"update fraction=.* must be a number in \(0, 1\)"):
            prune.constant(0.9, fraction=bad, frequency=10, end_step=100)
    with pytest.raises(ValueError, match="frequency=0 is invalid"):
        prune.cosine(0.9, fraction=0.3, frequency=0, end_step=100)
    with pytest.raises(ValueError, match="gives none"):
        prune.wrap(optax.sgd(0.1), prune.one_shot(0.9), prune.rigl(key=KEY))
    with pytest.raises(ValueError, match="prune.set_ needs a key"):
        prune.set_(key=None)
    # 0.95 uniform leaves round(0.05 * 32) = 2 of the head's weights but none of a 2x3 layer.
    small = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.ones((40, 40))}}
    tx = prune.wrap(
        optax.sgd(0.1),
        prune.cosine(0.95, fraction=0.3, frequency=10, end_step=100),
        prune.rigl(key=KEY, distribution="uniform"),
    )
    with pytest.raises(ValueError, match=r"no weight to drop or regrow: \{'a/kernel': \(2, 3\)\}"):
        tx.init(small)
