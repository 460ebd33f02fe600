"""Gradient-balancing methods against NumPy transcriptions of the published algorithms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy.optimize import fsolve, minimize

from jaxopt_ft import models, parallel
from jaxopt_ft import multitask as mt
from jaxopt_ft.multitask import balancers
from jaxopt_ft.multitask import balancing as bal


def _grads(num_tasks, dim=24, seed=0, conflict=0.8):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(num_tasks, dim))
    g[1] -= conflict * g[0]  # a conflicting pair, so the methods have work to do
    return g


def _f32(a):
    return jnp.asarray(a, jnp.float32)


# --- NumPy references ---------------------------------------------------------------------


def np_min_norm_2(v11, v12, v22):
    if v12 >= v11:
        return 0.999, v11
    if v12 >= v22:
        return 0.001, v22
    gamma = -(v12 - v22) / (v11 + v22 - 2 * v12)
    return gamma, v22 + gamma * (v12 - v22)


def np_simplex(y):
    m = len(y)
    s = np.sort(y)[::-1]
    tmpsum, tmax_f = 0.0, (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += s[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > s[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, 0.0)


def np_mgda(gram):
    """Sener & Koltun's Algorithm 2 (Frank-Wolfe on the simplex), as in their code."""
    n = len(gram)
    best = None
    for i in range(n):
        for j in range(i + 1, n):
            c, d = np_min_norm_2(gram[i, i], gram[i, j], gram[j, j])
            if best is None or d < best[2]:
                best = ((i, j), c, d)
    sol = np.zeros(n)
    sol[best[0][0]], sol[best[0][1]] = best[1], 1 - best[1]
    if n < 3:
        return sol
    for _ in range(250):
        grad = -gram @ sol
        proj = grad - grad.sum() / n
        tm1 = -sol[proj < 0] / proj[proj < 0]
        tm2 = (1.0 - sol[proj > 0]) / proj[proj > 0]
        t = 1.0
        if (tm1 > 1e-7).any():
            t = tm1[tm1 > 1e-7].min()
        if (tm2 > 1e-7).any():
            t = min(t, tm2[tm2 > 1e-7].min())
        new = np_simplex(proj * t + sol)
        nc, _ = np_min_norm_2(sol @ gram @ sol, sol @ gram @ new, new @ gram @ new)
        cand = nc * sol + (1 - nc) * new
        if np.abs(cand - sol).sum() < 1e-5:
            return sol
        sol = cand
    return sol


def np_cagrad(g, alpha, rescale):
    """Liu et al.'s CAGrad update with their SLSQP inner solve."""
    n = len(g)
    gg = g @ g.T
    c = alpha * np.sqrt(gg.mean() + 1e-8) + 1e-8
    x0 = np.ones(n) / n

    def obj(x):
        return x @ gg @ x0 + c * np.sqrt(x @ gg @ x + 1e-8)

    cons = ({"type": "eq", "fun": lambda x: 1 - x.sum()},)
    w = minimize(obj, x0, bounds=[(0, 1)] * n, constraints=cons, options={"ftol": 1e-12}).x
    gw = w @ g
    d = g.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw
    return d / {0: 1.0, 1: 1 + alpha**2, 2: 1 + alpha}[rescale]


def np_imtl(g):
    """Liu et al. (ICLR 2021), IMTL-G: alpha_{2:T} = g_1 U^T (D U^T)^-1."""
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d_mat, u_mat = g[0] - g[1:], u[0] - u[1:]
    a = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    return np.concatenate([[1 - a.sum()], a])


# --- solvers ------------------------------------------------------------------------------


def test_mgda_two_tasks_is_the_min_norm_point_of_the_segment():
    g = _grads(2, conflict=0.5)
    gamma = np.dot(g[1] - g[0], g[1]) / np.sum((g[0] - g[1]) ** 2)  # closed form, in (0, 1)
    assert 0.01 < gamma < 0.99
    w = np.asarray(jax.jit(bal.mgda_weights)(_f32(g @ g.T)))
    np.testing.assert_allclose(w, [gamma, 1 - gamma], rtol=1e-4)
    point = w @ g
    # Min-norm: the point is orthogonal to the segment's direction.
    assert abs(point @ (g[0] - g[1])) < 1e-4 * np.linalg.norm(g) ** 2


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_mgda_frank_wolfe_matches_numpy(num_tasks):
    g = _grads(num_tasks, seed=num_tasks)
    w = np.asarray(jax.jit(bal.mgda_weights)(_f32(g @ g.T)))
    ref = np_mgda(g @ g.T)
    np.testing.assert_allclose(w, ref, atol=2e-4)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
    # Near the min-norm point: no vertex improves on it by more than the solver's tolerance.
    d = w @ g
    assert (g @ d).min() >= d @ d - 1e-2 * (d @ d)


def test_mgda_normalize():
    g = _grads(3)
    losses = np.array([2.0, 0.5, 1.0])
    norms = np.linalg.norm(g, axis=1)
    for kind, scale in [("l2", norms), ("loss", losses), ("loss+", losses * norms)]:
        got = bal.mgda_normalize(_f32(g), _f32(losses), kind)
        np.testing.assert_allclose(got, g / scale[:, None], rtol=1e-5)


@pytest.mark.parametrize("num_tasks, rescale", [(2, 1), (4, 0), (5, 2)])
def test_cagrad_matches_the_published_update(num_tasks, rescale):
    g = _grads(num_tasks, seed=10 + num_tasks)
    d, w = jax.jit(lambda x: bal.cagrad_direction(x, alpha=0.5, rescale=rescale))(_f32(g))
    ref = np_cagrad(g, 0.5, rescale)
    np.testing.assert_allclose(d, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(np.sum(w), 1.0, rtol=1e-5)


def test_cagrad_alpha_zero_is_the_mean_gradient():
    g = _grads(3)
    d, _ = bal.cagrad_direction(_f32(g), alpha=0.0, rescale=1)
    np.testing.assert_allclose(d, g.mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_tasks", [2, 3, 6])
def test_nash_weights_solve_the_bargaining_equation(num_tasks):
    g = _grads(num_tasks, seed=20 + num_tasks)
    gram = g @ g.T
    k = gram / np.linalg.norm(gram)
    ref = fsolve(lambda a: k @ a - 1 / a, np.ones(num_tasks), xtol=1e-12)
    a = np.asarray(jax.jit(bal.nash_weights)(_f32(gram)))
    np.testing.assert_allclose(a, ref, rtol=1e-4)
    assert (a > 0).all()


@pytest.mark.parametrize("num_tasks", [2, 4])
def test_imtl_matches_the_closed_form_and_is_impartial(num_tasks):
    g = _grads(num_tasks, seed=30 + num_tasks)
    a = np.asarray(jax.jit(bal.imtl_weights)(_f32(g)))
    np.testing.assert_allclose(a, np_imtl(g), rtol=1e-3, atol=1e-5)
    d = a @ g
    proj = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ d  # equal projections
    np.testing.assert_allclose(proj, proj[0], rtol=1e-3)


def test_aligned_mtl_matches_numpy_eigendecomposition():
    g = _grads(4, seed=3)
    gram = g @ g.T
    lam, v = np.linalg.eigh(gram)
    order = np.argsort(lam)[::-1]
    lam, v = lam[order], v[:, order]
    b = np.sqrt(lam[-1]) * (v @ np.diag(1 / np.sqrt(lam)) @ v.T)
    a = np.asarray(jax.jit(bal.aligned_mtl_weights)(_f32(gram)))
    np.testing.assert_allclose(a, b.sum(0), rtol=1e-3)
    # Rank-deficient system: a duplicated task drops one component instead of dividing by 0.
    dup = np.concatenate([g[:2], g[:1]])
    assert np.isfinite(np.asarray(bal.aligned_mtl_weights(_f32(dup @ dup.T)))).all()


def test_graddrop_keeps_one_sign_per_coordinate():
    g = _grads(3, dim=64)
    key = jax.random.PRNGKey(4)
    got = np.asarray(jax.jit(lambda x: bal.graddrop(x, key, leak=0.2))(_f32(g)))
    u = np.asarray(jax.random.uniform(key, (64,), jnp.float32))
    p = 0.5 * (1 + g.sum(0) / (np.abs(g).sum(0) + 1e-7))
    keep = ((p > u) & (g > 0)) | ((p < u) & (g < 0))
    ref = (g * (0.2 + 0.8 * keep)).sum(0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # Unanimous signs always survive.
    same = np.abs(g)
    np.testing.assert_allclose(bal.graddrop(_f32(same), key, leak=0.0), same.sum(0), rtol=1e-5)


def test_gradvac_matches_numpy_with_the_same_orders():
    g = _grads(3, seed=7)
    rho = np.array([[0.0, 0.3, 0.1], [0.3, 0.0, -0.2], [0.2, 0.4, 0.0]])
    key = jax.random.PRNGKey(2)
    beta = 0.5
    got, new_rho = jax.jit(lambda x, r: bal.gradvac_project(x, r, key, beta=beta))(
        _f32(g), _f32(rho)
    )
    orders = [
        np.asarray(jax.random.permutation(k, 3)) for k in jax.random.split(key, 3)
    ]  # the same draw as the implementation
    pc, rho_ref = g.copy(), rho.copy()
    for i in range(3):
        for j in orders[i]:
            if j == i:
                continue
            phi = pc[i] @ g[j] / (np.linalg.norm(pc[i]) * np.linalg.norm(g[j]) + 1e-8)
            t = rho_ref[i, j]
            if phi < t:
                w = (
                    np.linalg.norm(pc[i])
                    * (t * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - t**2))
                    / (np.linalg.norm(g[j]) * np.sqrt(1 - t**2) + 1e-8)
                )
                pc[i] = pc[i] + w * g[j]
            rho_ref[i, j] = (1 - beta) * t + beta * phi
    np.testing.assert_allclose(got, pc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_rho, rho_ref, rtol=1e-4, atol=1e-6)


def test_rlw_weights_are_a_softmax_of_a_normal_draw_from_the_key():
    key = jax.random.PRNGKey(11)
    w = np.asarray(balancers.rlw_weights(key, 4))
    np.testing.assert_allclose(w, jax.nn.softmax(jax.random.normal(key, (4,))), rtol=1e-6)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    assert not np.allclose(w, balancers.rlw_weights(jax.random.PRNGKey(12), 4))


# --- train steps --------------------------------------------------------------------------

SPEC = {
    "digit": {"kind": "classification", "num_classes": 10},
    "parity": {"kind": "classification", "num_classes": 2},
    "slope": {"kind": "regression"},
}
TASKS = mt.make_tasks(SPEC)
NAMES = [t.name for t in TASKS]
MODEL = mt.MultiTaskModel(models.get("mlp", hidden=(12,)), TASKS)


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, n).astype(np.int32)
    return {
        "x": rng.normal(size=(n, 40)).astype(np.float32),
        "targets": {
            "digit": label,
            "parity": label % 2,
            "slope": rng.normal(size=n).astype(np.float32),
        },
    }


def _init(name, tx):
    return mt.init_state(
        MODEL, mt.Method(name=name), key=jax.random.PRNGKey(0), sample_x=np.zeros((1, 40)), tx=tx
    )


def _separate_grads(params, batch):
    """Each task's loss and gradient from its own `jax.grad` (not the one-pass jacrev)."""
    loss_fn = mt.task_losses(TASKS)

    def losses(p):
        return loss_fn(MODEL.apply({"params": p}, batch["x"]), batch)[0]

    base = mt.model_params(params)
    values = np.asarray(losses(base), np.float64)
    grads = [jax.grad(lambda p, i=i: losses(p)[i])(base) for i in range(len(TASKS))]
    trunk = np.stack([np.asarray(ravel_pytree(g["trunk"])[0], np.float64) for g in grads])
    heads = [g["heads"] for g in grads]
    return values, trunk, heads


def _reference(name, values, g):
    """(trunk direction, per-task head factors) of the published updates (LibMTL defaults)."""
    if name == "mgda":
        return np_mgda(g @ g.T) @ g, np.ones(3)
    if name == "nash_mtl":
        gram = g @ g.T
        k = gram / np.linalg.norm(gram)
        a = fsolve(lambda a: k @ a - 1 / a, np.ones(3), xtol=1e-12)
        d = a @ g
        return d * min(1.0, 1.0 / (np.linalg.norm(d) + 1e-6)), a
    if name == "imtl":  # learned scales start at 0: exp(0) L - 0
        return np_imtl(g) @ g, np.ones(3)
    if name == "db_mtl":  # step 1: buffer = g + 0.9 (0 - g) of the log-loss gradients
        buf = 0.1 * g / (values[:, None] + 1e-8)
        norms = np.linalg.norm(buf, axis=1)
        return (norms.max() / norms) @ buf, 1 / (values + 1e-8)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["mgda", "nash_mtl", "imtl", "db_mtl"])
def test_step_moves_trunk_by_the_method_and_heads_by_their_own_task(name):
    state, method = _init(name, optax.sgd(1.0))  # the update is minus the gradient
    batch = _batch()
    values, g, heads = _separate_grads(state.params, batch)
    new, metrics = jax.jit(mt.make_train_step(TASKS, method))(state, batch, jax.random.PRNGKey(0))
    moved = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, state.params, new.params)
    direction, head_scale = _reference(name, values, g)
    np.testing.assert_allclose(
        ravel_pytree(moved["trunk"])[0], direction, rtol=2e-3, atol=2e-4 * np.abs(direction).max()
    )
    for i, n in enumerate(NAMES):
        jax.tree.map(
            lambda a, b, s=head_scale[i]: np.testing.assert_allclose(
                a, s * b, rtol=2e-3, atol=1e-6
            ),
            moved["heads"][n],
            heads[i][n],
        )
    if name == "imtl":  # d/ds (exp(s) L - s) at s = 0
        got = [float(moved["imtl_scale"][n]) for n in NAMES]
        np.testing.assert_allclose(got, values - 1, rtol=1e-4)
    np.testing.assert_allclose([float(metrics[f"loss_{n}"]) for n in NAMES], values, rtol=1e-5)


def test_mgda_ub_weights_the_representation_gradients():
    """MGDA-UB: min-norm weights of the (T, D) gradients w.r.t. the trunk's output."""
    state, method = _init("mgda_ub", optax.sgd(1.0))
    batch = _batch()
    params = state.params
    values, _, heads = _separate_grads(params, batch)

    def features(p):
        fn = lambda m, x: m.trunk(x, train=False, features_only=True)  # noqa: E731
        return MODEL.apply({"params": p}, batch["x"], method=fn)

    def task_loss(z, head, i):  # the heads written out by hand
        t = TASKS[i]
        y = z @ head[t.name]["kernel"] + head[t.name]["bias"]
        y = y[:, 0] if t.kind == "regression" else y
        return mt.tasks.task_loss(t, y, batch["targets"][t.name]).mean()

    z = features(params)
    rep = np.stack(
        [np.asarray(jax.grad(task_loss)(z, params["heads"], i)).sum(0) for i in range(3)]
    )
    w = np_mgda(rep.astype(np.float64) @ rep.T.astype(np.float64))
    trunk = [
        jax.grad(lambda tr, i=i: task_loss(features({**params, "trunk": tr}), params["heads"], i))(
            params["trunk"]
        )
        for i in range(3)
    ]
    want = sum(w[i] * np.asarray(ravel_pytree(trunk[i])[0], np.float64) for i in range(3))
    new, metrics = jax.jit(mt.make_train_step(TASKS, method))(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose([float(metrics[f"weight_{n}"]) for n in NAMES], w, atol=2e-4)
    moved = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, params, new.params)
    np.testing.assert_allclose(ravel_pytree(moved["trunk"])[0], want, rtol=1e-3, atol=1e-6)
    for i, n in enumerate(NAMES):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
            moved["heads"][n],
            heads[i][n],
        )
    assert set(new.params) == {"trunk", "heads"}  # the offset is never stored
    np.testing.assert_allclose([float(metrics[f"loss_{n}"]) for n in NAMES], values, rtol=1e-5)


NEW = [
    "mgda",
    "mgda_ub",
    "cagrad",
    "nash_mtl",
    "imtl",
    "gradvac",
    "graddrop",
    "rlw",
    "aligned_mtl",
    "db_mtl",
]
STEPS = 20


def _run(name, strategy=None):
    state, method = _init(name, optax.adam(1e-2))
    step = mt.make_train_step(
        TASKS, method, axis_name=None if strategy is None else strategy.axis_name
    )
    if strategy is None:
        step = jax.jit(step, donate_argnums=0)
    else:
        state, step = strategy.prepare(state), strategy.step(step)
    losses = []
    for k in range(STEPS):
        state, metrics = step(state, _batch(seed=k), jax.random.fold_in(jax.random.PRNGKey(1), k))
        losses.append(float(np.asarray(metrics["loss"]).mean()))
    state = state if strategy is None else parallel.local(strategy.unwrap(state))
    return np.array(losses), state


# The methods with state or an iterative solver (the others are weighted sums of the same
# per-task gradients), each under one of the two modes (both share the step code).
PARALLEL = {"mgda": "sharding", "nash_mtl": "pmap", "imtl": "sharding", "gradvac": "pmap",
            "aligned_mtl": "sharding", "db_mtl": "pmap"}  # fmt: skip


@pytest.mark.parametrize("name", list(PARALLEL))
def test_every_method_runs_data_parallel_like_one_device(name):
    ref_losses, ref = _run(name)
    assert ref_losses[-1] < ref_losses[0] or name == "rlw"  # it trains (RLW's loss is random)
    for mode in [PARALLEL[name]]:
        losses, got = _run(name, parallel.make(mode))
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=mode)
        jax.tree.map(
            lambda a, b, m=mode: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=m),
            got.params,
            ref.params,
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
            got.aux["weighting"],
            ref.aux["weighting"],
        )


def test_delta_m_follows_libmtl():
    from jaxopt_ft.experiments.multitask import delta_m

    tasks = mt.make_tasks({"digit": {"kind": "classification", "num_classes": 10}, **SPEC})
    single = {"digit_accuracy": 0.8, "parity_accuracy": 0.9, "slope_mse": 0.02}
    row = {"digit_accuracy": 0.88, "parity_accuracy": 0.9, "slope_mse": 0.03}
    # (+10% + 0% - 50%) / 3 tasks
    np.testing.assert_allclose(delta_m(row, single, tasks), -40.0 / 3, rtol=1e-9)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "mgda_plus"}, "Unknown method 'mgda_plus'; accepted: .*nash_mtl"),
        ({"name": "cagrad", "cagrad_rescale": 3}, "cagrad_rescale must be 0, 1 or 2, got 3"),
        ({"name": "gradvac", "gradvac_beta": 1.5}, r"gradvac_beta must be in \(0, 1\]"),
        ({"name": "graddrop", "graddrop_leak": -0.1}, r"graddrop_leak must be in \[0, 1\]"),
        ({"name": "db_mtl", "db_beta": 1.0}, r"db_beta must be in \[0, 1\)"),
        ({"name": "mgda", "mgda_normalize": "l1"}, "mgda_normalize='l1' is not accepted"),
        ({"name": "cagrad", "rep_grad": True}, "rep_grad=True is not supported by method 'cagrad'"),
    ],
)
def test_bad_method_options(kw, match):
    with pytest.raises(ValueError, match=match):
        mt.Method(**kw)


# --- architectures ------------------------------------------------------------------------


class _SeqTrunk(nn.Module):
    """A trunk whose features keep a length axis (not flat), which MMoE cannot mix."""

    @nn.compact
    def __call__(self, x, *, train=False, features_only=False):
        del train, features_only
        return nn.Dense(4)(x[..., None])


def test_mmoe_mixes_the_experts_by_each_tasks_gate():
    expert = models.get("mlp", hidden=(6,))
    model = mt.MultiTaskModel(mt.MMoE(expert, TASKS, num_experts=3), TASKS)
    x = _batch(n=5)["x"]
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    assert sorted(params["trunk"]) == ["expert0", "expert1", "expert2"] + [
        f"gate_{n}" for n in sorted(NAMES)
    ]
    feats = np.stack(
        [
            np.asarray(
                expert.apply({"params": params["trunk"][f"expert{e}"]}, x, features_only=True)
            )
            for e in range(3)
        ],
        axis=1,
    )
    out = model.apply({"params": params}, x)
    for t in TASKS:
        gate = params["trunk"][f"gate_{t.name}"]
        logits = x @ np.asarray(gate["kernel"]) + np.asarray(gate["bias"])
        g = np.exp(logits - logits.max(1, keepdims=True))
        g /= g.sum(1, keepdims=True)
        z = np.einsum("be,bed->bd", g, feats)
        head = params["heads"][t.name]
        y = z @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
        y = y[:, 0] if t.kind == "regression" else y
        np.testing.assert_allclose(out[t.name], y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        params["trunk"]["expert0"]["dense1"]["kernel"],
        params["trunk"]["expert1"]["dense1"]["kernel"],
    )


def test_mmoe_trains_with_a_gradient_method():
    model = mt.MultiTaskModel(mt.MMoE(models.get("mlp", hidden=(6,)), TASKS, num_experts=2), TASKS)
    state, method = mt.init_state(
        model, mt.Method(name="imtl"), key=jax.random.PRNGKey(0), sample_x=np.zeros((1, 40)),
        tx=optax.adam(1e-2),
    )  # fmt: skip
    step = jax.jit(mt.make_train_step(TASKS, method))
    first = None
    for k in range(15):
        state, metrics = step(state, _batch(seed=0), jax.random.PRNGKey(k))
        first = first if first is not None else float(metrics["loss_digit"])
    assert float(metrics["loss_digit"]) < first


@pytest.mark.parametrize(
    ("trunk", "match"),
    [
        (mt.MMoE(models.get("mlp", hidden=(6,)), TASKS, num_experts=0), "num_experts must be"),
        (mt.MMoE(_SeqTrunk(), TASKS, num_experts=2), r"gives shape \(1, 40, 4\)"),
    ],
)
def test_mmoe_rejects_bad_experts(trunk, match):
    with pytest.raises(ValueError, match=match):
        mt.MultiTaskModel(trunk, TASKS).init(jax.random.PRNGKey(0), np.zeros((1, 40)))
