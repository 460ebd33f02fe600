"""Gradient balancing on a (T, P) matrix of task gradients: the solvers behind the methods.

Every function is pure and jit-compatible; inner solvers run a fixed (or bounded) number of
iterations so that they trace once. ``grads`` is the (T, P) matrix of the tasks' trunk
gradients (`jaxopt_ft.multitask.gradients.stacked_to_matrix`), ``gram`` its (T, T) Gram matrix.
The algorithms follow the papers and LibMTL's transcriptions of the official code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MGDA_MAX_ITER = 250
MGDA_STOP = 1e-5
CAGRAD_ITERS = 400
NASH_ITERS = 20


def _min_norm_2(v11: jax.Array, v12: jax.Array, v22: jax.Array) -> jax.Array:
    """Weight ``gamma`` of the min-norm point ``gamma v1 + (1 - gamma) v2`` of a segment.

    Sener & Koltun's Algorithm 1, with their clamping of the ends to 0.999 / 0.001.
    """
    denom = v11 + v22 - 2.0 * v12
    inner = -(v12 - v22) / jnp.where(denom > 0, denom, 1.0)
    return jnp.where(v12 >= v11, 0.999, jnp.where(v12 >= v22, 0.001, inner))


def _segment_cost(v11, v12, v22, gamma):
    return jnp.where(v12 >= v11, v11, jnp.where(v12 >= v22, v22, v22 + gamma * (v12 - v22)))


def project_to_simplex(y: jax.Array) -> jax.Array:
    """Euclidean projection of a vector onto the probability simplex (sort-based)."""
    m = y.shape[0]
    s = jnp.sort(y)[::-1]
    tmax = (jnp.cumsum(s)[:-1] - 1.0) / jnp.arange(1, m, dtype=y.dtype)
    hit = tmax > s[1:]
    fallback = (jnp.sum(y) - 1.0) / m
    t = jnp.where(jnp.any(hit), tmax[jnp.argmax(hit)], fallback)
    return jnp.maximum(y - t, 0.0)


def _next_point(cur: jax.Array, grad: jax.Array) -> jax.Array:
    n = cur.shape[0]
    proj = grad - jnp.sum(grad) / n
    big = jnp.inf
    tm1 = jnp.where(proj < 0, -cur / jnp.where(proj < 0, proj, 1.0), big)
    tm2 = jnp.where(proj > 0, (1.0 - cur) / jnp.where(proj > 0, proj, 1.0), big)
    t1 = jnp.min(jnp.where(tm1 > 1e-7, tm1, big))
    t2 = jnp.min(jnp.where(tm2 > 1e-7, tm2, big))
    t = jnp.where(jnp.isfinite(t1), t1, 1.0)
    t = jnp.where(jnp.isfinite(t2), jnp.minimum(t, t2), t)
    return project_to_simplex(proj * t + cur)


def mgda_weights(gram: jax.Array) -> jax.Array:
    """MGDA's min-norm point of the gradients' convex hull (Sener & Koltun, NeurIPS 2018).

    ``argmin_{w in simplex} ||sum_t w_t g_t||^2`` by the paper's Frank-Wolfe solver
    (Algorithm 2): start at the best pair's min-norm point, then at most 250 line-searched
    steps towards the projected descent direction, stopping when the weights move by less
    than 1e-5 (L1). With two tasks the start is the exact answer.

    Args:
        gram: (T, T) Gram matrix ``G G^T`` of the task gradients.

    Returns:
        (T,) weights on the simplex.
    """
    n = gram.shape[0]
    i, j = jnp.triu_indices(n, k=1)
    v11, v12, v22 = gram[i, i], gram[i, j], gram[j, j]
    gammas = _min_norm_2(v11, v12, v22)
    best = jnp.argmin(_segment_cost(v11, v12, v22, gammas))
    sol = jnp.zeros((n,), gram.dtype).at[i[best]].set(gammas[best])
    sol = sol.at[j[best]].set(1.0 - gammas[best])
    if n < 3:
        return sol

    def body(carry):
        sol, it, _ = carry
        new = _next_point(sol, -gram @ sol)
        nc = _min_norm_2(sol @ gram @ sol, sol @ gram @ new, new @ gram @ new)
        cand = nc * sol + (1.0 - nc) * new
        done = jnp.sum(jnp.abs(cand - sol)) < MGDA_STOP
        return jnp.where(done, sol, cand), it + 1, done

    def cond(carry):
        return (carry[1] < MGDA_MAX_ITER) & ~carry[2]

    sol, _, _ = jax.lax.while_loop(cond, body, (sol, 0, jnp.asarray(False)))
    return sol


def mgda_normalize(grads: jax.Array, losses: jax.Array, kind: str) -> jax.Array:
    """MGDA's gradient normalisation (Sener & Koltun §3.3): ``none``, ``l2``, ``loss``,
    ``loss+`` (loss times L2 norm); each row is divided by its normaliser."""
    norms = jnp.linalg.norm(grads, axis=1)
    scale = {"none": jnp.ones_like(losses), "l2": norms, "loss": losses, "loss+": losses * norms}
    return grads / scale[kind][:, None]


def cagrad_direction(
    grads: jax.Array, *, alpha: float, rescale: int
) -> tuple[jax.Array, jax.Array]:
    """CAGrad's update (Liu et al., "Conflict-Averse Gradient Descent", NeurIPS 2021).

    With ``g0`` the mean gradient and ``c = alpha ||g0||``, the weights solve
    ``min_{w in simplex} w^T G G^T 1/T + c ||G^T w||`` (here by 400 steps of accelerated
    projected gradient descent on the Gram-normalised problem), and the direction is
    ``d = g0 + c / ||g_w|| * g_w``, divided by ``1 + alpha^2`` (``rescale=1``), ``1 + alpha``
    (``2``) or left as is (``0``).

    Returns:
        ``((P,) direction, (T,) weights w)``.
    """
    num = grads.shape[0]
    gram = grads @ grads.T
    scale = jnp.mean(gram) + 1e-8
    a = gram / scale  # f(w) = scale * (w^T a b + alpha sqrt(w^T a w)) up to the 1e-8 terms
    b = jnp.full((num,), 1.0 / num, grads.dtype)
    lipschitz = jnp.linalg.eigvalsh(a)[-1] * (1.0 + alpha) + 1e-6

    def grad_f(w):
        aw = a @ w
        return a @ b + alpha * aw / jnp.sqrt(w @ aw + 1e-8 / scale)

    def step(k, carry):
        w, y, w_prev = carry
        new = project_to_simplex(y - grad_f(y) / lipschitz)
        y = new + (k / (k + 3.0)) * (new - w)
        return new, y, w

    w, _, _ = jax.lax.fori_loop(0, CAGRAD_ITERS, step, (b, b, b))
    g0_norm = jnp.sqrt(jnp.mean(gram) + 1e-8)
    c = alpha * g0_norm + 1e-8
    gw = w @ grads
    d = jnp.mean(grads, axis=0) + c / (jnp.linalg.norm(gw) + 1e-8) * gw
    divisor = {0: 1.0, 1: 1.0 + alpha**2, 2: 1.0 + alpha}[rescale]
    return d / divisor, w


def nash_weights(gram: jax.Array) -> jax.Array:
    """Nash-MTL's bargaining solution (Navon et al., ICML 2022): ``alpha > 0`` with
    ``G G^T alpha = 1 / alpha``.

    It is the minimiser of the convex ``1/2 a^T K a - sum_t log a_t`` (its gradient is
    ``K a - 1/a``), found here by 20 damped Newton steps from the best multiple of the ones
    vector, each step kept inside ``a > 0``. As in the official code the Gram matrix is first
    divided by its Frobenius norm (the returned weights are for that normalised matrix).

    Returns:
        (T,) positive weights.
    """
    num = gram.shape[0]
    k = gram / (jnp.linalg.norm(gram) + 1e-12) + 1e-8 * jnp.eye(num, dtype=gram.dtype)
    start = jnp.sqrt(num / jnp.maximum(jnp.sum(k), 1e-12)) * jnp.ones((num,), gram.dtype)

    def step(_, a):
        g = k @ a - 1.0 / a
        hess = k + jnp.diag(1.0 / a**2)
        d = -jnp.linalg.solve(hess, g)
        # Fraction to the boundary: never step more than 99% of the way to a_t = 0.
        ratio = jnp.where(d < 0, -a / jnp.where(d < 0, d, -1.0), jnp.inf)
        t = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
        return a + t * d

    return jax.lax.fori_loop(0, NASH_ITERS, step, start)


def imtl_weights(grads: jax.Array) -> jax.Array:
    """IMTL-G's closed form (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    With ``D = g_1 - g_t`` and ``U = u_1 - u_t`` (``u`` the unit gradients) for t = 2..T,
    ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}`` and ``alpha_1 = 1 - sum alpha_{2:T}``: the
    aggregate ``sum alpha_t g_t`` has equal projections on every unit gradient.
    """
    unit = grads / jnp.linalg.norm(grads, axis=1, keepdims=True)
    d = grads[:1] - grads[1:]
    u = unit[:1] - unit[1:]
    alpha = (grads[0] @ u.T) @ jnp.linalg.inv(d @ u.T)
    return jnp.concatenate([1.0 - jnp.sum(alpha, keepdims=True), alpha])


def aligned_mtl_weights(gram: jax.Array) -> jax.Array:
    """Aligned-MTL (Senushkin et al., CVPR 2023): weights that align the principal components.

    With ``G G^T = V diag(lambda) V^T`` (eigenvalues above ``max(lambda) * T * eps`` kept),
    ``B = sqrt(lambda_min) V diag(lambda^-1/2) V^T`` and the weights are ``B``'s column sums.
    """
    lam, vec = jnp.linalg.eigh(gram)
    tol = jnp.max(lam) * gram.shape[0] * jnp.finfo(gram.dtype).eps
    keep = lam > tol
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    smallest = jnp.min(jnp.where(keep, lam, jnp.inf))
    b = jnp.sqrt(smallest) * (vec * inv_sqrt) @ vec.T
    return jnp.sum(b, axis=0)


def graddrop(grads: jax.Array, key: jax.Array, *, leak: float) -> jax.Array:
    """GradDrop (Chen et al., "Just Pick a Sign", NeurIPS 2020) on (T, P) gradients.

    Per coordinate, the positive sign survives with probability
    ``P = 1/2 (1 + sum_t g_t / sum_t |g_t|)``, the negative one otherwise (one uniform draw
    per coordinate from ``key``); a task's gradient keeps the coordinates whose sign
    survived, the others scaled by ``leak``. Returns the (P,) sum of the masked rows.
    """
    purity = 0.5 * (1.0 + jnp.sum(grads, 0) / (jnp.sum(jnp.abs(grads), 0) + 1e-7))
    u = jax.random.uniform(key, purity.shape, grads.dtype)
    mask = ((purity > u) & (grads > 0)) | ((purity < u) & (grads < 0))
    return jnp.sum(grads * (leak + (1.0 - leak) * mask), axis=0)


def gradvac_project(
    grads: jax.Array, rho: jax.Array, key: jax.Array, *, beta: float
) -> tuple[jax.Array, jax.Array]:
    """Gradient Vaccine (Wang et al., ICLR 2021) on the whole model (one parameter group).

    For each task i, the other tasks j in a random order (one order per task, from ``key``):
    with ``phi = cos(g_i', g_j)`` below the EMA target ``rho_ij``, ``g_i'`` gains
    ``||g_i'|| (rho sqrt(1-phi^2) - phi sqrt(1-rho^2)) / (||g_j|| sqrt(1-rho^2)) g_j``; then
    ``rho_ij <- (1 - beta) rho_ij + beta phi`` for every visited pair.

    Returns:
        ``((T, P) adjusted gradients, (T, T) new targets)``.
    """
    num = grads.shape[0]
    orders = jax.vmap(lambda k: jax.random.permutation(k, num))(jax.random.split(key, num))
    norms = jnp.linalg.norm(grads, axis=1)

    def row(g_i, i, order, rho_i):
        def body(carry, j):
            g, r = carry
            g_norm = jnp.linalg.norm(g)
            phi = jnp.vdot(g, grads[j]) / (g_norm * norms[j] + 1e-8)
            target = r[j]
            s_phi = jnp.sqrt(jnp.clip(1.0 - phi**2, 0.0))
            s_tgt = jnp.sqrt(jnp.clip(1.0 - target**2, 0.0))
            w = g_norm * (target * s_phi - phi * s_tgt) / (norms[j] * s_tgt + 1e-8)
            other = j != i
            g = g + jnp.where(other & (phi < target), w, 0.0) * grads[j]
            r = r.at[j].set(jnp.where(other, (1.0 - beta) * target + beta * phi, target))
            return (g, r), None

        (g, r), _ = jax.lax.scan(body, (g_i, rho_i), order)
        return g, r

    return jax.vmap(row)(grads, jnp.arange(num), orders, rho)
