"""The LR range test on a least-squares problem (a quadratic with known curvature)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_ft import lr_range, optim, train

RNG = np.random.default_rng(0)
X = RNG.normal(size=(256, 8)).astype(np.float32) * np.linspace(0.5, 2.0, 8, dtype=np.float32)
W_TRUE = RNG.normal(size=(8, 1)).astype(np.float32)
Y = X @ W_TRUE + 0.1 * RNG.normal(size=(256, 1)).astype(np.float32)
# 0.5 * mean((Xw - y)^2) has Hessian X^T X / n: gradient descent diverges above 2 / h_max.
H_MAX = float(np.linalg.eigvalsh(X.T @ X / len(X)).max())


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(1, use_bias=False)(x)


def _mse(outputs, batch):
    return 0.5 * jnp.mean((outputs - batch["y"]) ** 2), {}


def _batches():
    while True:  # full batch: the curvature is exactly H_MAX
        yield {"x": X, "y": Y}


def _make_state(schedule):
    model = Linear()
    params, _ = train.init_model(model, jax.random.PRNGKey(0), X[:1])
    tx = optim.make("sgd", learning_rate=schedule)
    return train.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _reference_smooth(losses, beta):
    # fastai's LR finder (Smith 2017 range test): avg = beta*avg + (1-beta)*loss, debiased.
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return np.array(out)


def test_quadratic_suggestion_in_band():
    result = lr_range.run(
        _make_state,
        train.make_train_step(_mse),
        _batches(),
        key=jax.random.PRNGKey(0),
        min_lr=1e-4,
        max_lr=100.0,
        steps=200,
    )
    edge = 2.0 / H_MAX
    assert result.stopped_early  # the loss blew up past 2 / h_max
    assert result.lrs[-1] > edge
    for lr in (result.min_div10, result.steepest):
        assert edge / 100 <= lr <= edge, (lr, edge)
    np.testing.assert_allclose(result.smoothed, _reference_smooth(result.losses, 0.98), rtol=1e-12)
    # The learning rate ramps exponentially from min_lr.
    np.testing.assert_allclose(result.lrs[0], 1e-4, rtol=1e-5)
    ratios = result.lrs[1:] / result.lrs[:-1]
    np.testing.assert_allclose(ratios, (100.0 / 1e-4) ** (1 / 199), rtol=1e-4)


def test_suggest_by_hand():
    lrs = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    smoothed = np.array([2.0, 1.9, 1.0, 0.5, 3.0])
    min_div10, steepest = lr_range.suggest(lrs, smoothed)
    assert min_div10 == pytest.approx(0.1)
    # d smoothed / d log10 lr: -0.1 (edge), -0.5, -0.7, -0.5 (edge): steepest at lr = 0.1
    assert steepest == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "inverted"),
        ({"min_lr": 1.0, "max_lr": 1.0}, "empty"),
        ({"min_lr": 0.0, "max_lr": 1.0}, "0 < min_lr"),
        ({"steps": 3}, "steps=3"),
        ({"diverge": 1.0}, "diverge=1.0"),
    ],
)
def test_bad_ranges(kw, match):
    args = {"min_lr": 1e-5, "max_lr": 1.0, "steps": 100, "beta": 0.98, "diverge": 4.0, **kw}
    with pytest.raises(ValueError, match=match):
        lr_range.check(**args)


def test_lr_range_experiment(tmp_path):
    from helpers import config_path, load_config

    from jaxopt_ft import experiments

    overrides = {"model.name": "logistic", "lr_range.steps": 40, "lr_range.max_lr": 100.0}
    module, settings = experiments.prepare(
        load_config(config_path("mnist1d_lr_range"), overrides=overrides)
    )
    (row,) = module.run(settings, str(tmp_path))["rows"]
    assert 1e-4 <= row["suggested_lr"] < row["min_loss_lr"] <= 100.0
    assert row["suggested_lr"] == pytest.approx(row["min_loss_lr"] / 10)
    assert (tmp_path / "lr_range.png").stat().st_size > 1000
    bad = load_config(config_path("mnist1d_lr_range"), overrides={"lr_range.min_lr": 20.0})
    with pytest.raises(ValueError, match="lr_range.min_lr=20.0 must be below"):
        experiments.prepare(bad)
