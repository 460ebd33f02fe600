import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import optim


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
    tx = optim.make(name, learning_rate=0.1)
    params = {"w": jnp.array([3.0, -2.0])}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(50):
        params, state = step(params, state)
    assert float(jnp.sum(params["w"] ** 2)) < 13.0 * 0.5


def test_sgd_is_plain_sgd():
    tx = optim.make("sgd", learning_rate=0.5)
    g = {"w": jnp.array([2.0])}
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(u["w"], [-1.0])


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_every_schedule_starts_and_decays(name):
    fn = optim.schedule(name, learning_rate=1.0, steps=100, warmup_steps=10)
    values = np.array([float(fn(t)) for t in range(0, 101)])
    assert values.max() == pytest.approx(1.0)
    assert np.all(values >= 0)
    if name != "constant":
        assert values[-1] < 0.2
    else:
        assert np.all(values == 1.0)


def test_schedule_known_values():
    exp = optim.schedule("exponential", learning_rate=1.0, steps=100, decay_rate=0.01)
    assert float(exp(50)) == pytest.approx(0.1, rel=1e-5)
    inv = optim.schedule("inverse_time", learning_rate=1.0, steps=100, decay_rate=0.1)
    assert float(inv(100)) == pytest.approx(0.1, rel=1e-5)
    assert float(inv(50)) == pytest.approx(1 / 5.5, rel=1e-5)
    cos = optim.schedule("cosine", learning_rate=2.0, steps=100)
    assert float(cos(50)) == pytest.approx(1.0, rel=1e-5)
    warm = optim.schedule("warmup_cosine", learning_rate=1.0, steps=100, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.5)
    pw = optim.schedule("piecewise", learning_rate=1.0, steps=100, boundaries=(0.5,), scale=0.1)
    assert float(pw(49)) == 1.0 and float(pw(51)) == pytest.approx(0.1)


def test_bad_names_and_values():
    with pytest.raises(ValueError, match="accepted: sgd, momentum"):
        optim.make("nonsense", learning_rate=0.1)
    with pytest.raises(ValueError, match="accepted: constant"):
        optim.schedule("nonsense", learning_rate=0.1, steps=10)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        optim.make("adam", learning_rate=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.make("momentum", learning_rate=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.schedule("warmup_cosine", learning_rate=0.1, steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="decay_rate"):
        optim.schedule("exponential", learning_rate=0.1, steps=10, decay_rate=0.0)
