"""LoRA adapters and head training on cached features."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import finetune, models, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.finetune import features, lora

CNN = models.get("cnn", channels=(4, 4, 4), num_classes=3)
X = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32)
LABEL = (np.abs(X[:, 0]) * 2).astype(np.int32) % 3


def _params(seed=0, model=CNN):
    params, _ = train.init_model(model, jax.random.PRNGKey(seed), X[:1])
    return params


def _lora_state(targets=("conv[23]/kernel", "head/kernel"), rank=2, alpha=4.0):
    base = _params()
    adapters = lora.init(base, targets=list(targets), rank=rank, key=jax.random.PRNGKey(1))
    params = {"base": base, "lora": adapters}
    labels = finetune.freeze_labels(params, finetune.mode_rules("lora"))
    tx = finetune.optimizer(labels, {"head": optax.adam(1e-2), "lora": optax.adam(1e-2)})
    apply = lora.wrap_apply(CNN.apply, alpha=alpha)
    return train.TrainState.create(apply_fn=apply, params=params, tx=tx), labels


def test_adapter_shapes_and_zero_b():
    state, labels = _lora_state()
    ad = state.params["lora"]
    assert ad["conv2"]["kernel"]["a"].shape == (3 * 4, 2)  # fan-in = window * in channels
    assert ad["conv2"]["kernel"]["b"].shape == (2, 4)
    assert ad["head"]["kernel"]["a"].shape == (20, 2)
    assert sorted(tree_lib.paths(ad)) == [
        "conv2/kernel/a", "conv2/kernel/b", "conv3/kernel/a", "conv3/kernel/b",
        "head/kernel/a", "head/kernel/b",
    ]  # fmt: skip
    assert all(not np.any(ad[k]["kernel"]["b"]) for k in ("conv2", "conv3", "head"))
    trainable, frozen = finetune.count_trainable(state.params, labels)
    assert trainable == lora.count(ad) + 63 and frozen == tree_lib.count_params(_params()) - 63


def test_zero_b_gives_identical_outputs_at_step_zero():
    state, _ = _lora_state()
    out = jax.jit(state.apply_fn)(state.variables(), X)
    ref = jax.jit(CNN.apply)({"params": _params()}, X)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_merged_export_equals_unmerged_forward_after_training():
    state, labels = _lora_state()
    step = jax.jit(train.make_train_step(trainable=finetune.trainable_mask(labels)))
    for i in range(5):
        state, _ = step(state, {"x": X, "label": LABEL}, jax.random.PRNGKey(i))
    assert np.any(np.asarray(state.params["lora"]["conv2"]["kernel"]["b"]))
    base = train.numpy_tree(state.params["base"])
    np.testing.assert_array_equal(base["conv1"]["kernel"], _params()["conv1"]["kernel"])
    unmerged = jax.jit(state.apply_fn)(state.variables(), X)
    exported = lora.export(state.params, alpha=4.0)
    assert jax.tree.structure(exported) == jax.tree.structure(_params())
    merged = jax.jit(CNN.apply)({"params": exported}, X)
    np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(merged), np.asarray(CNN.apply({"params": _params()}, X)))


def test_dense_adapter_matches_the_low_rank_formula():
    model = models.get("logistic", num_classes=3)
    base = _params(model=model)
    ad = lora.init(base, targets=["head/kernel"], rank=2, key=jax.random.PRNGKey(0))
    b = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    ad["head"]["kernel"]["b"] = b
    out = lora.wrap_apply(model.apply, alpha=6.0)({"params": {"base": base, "lora": ad}}, X)
    a = ad["head"]["kernel"]["a"]
    expected = X @ base["head"]["kernel"] + base["head"]["bias"] + 3.0 * (X @ a) @ b
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_lora_errors_name_the_paths():
    base = _params()
    with pytest.raises(
        ValueError, match=r"LoRA targets: rules matching no parameter: \['dense9/kernel'\]"
    ):
        lora.init(base, targets=["dense9/kernel"], rank=2, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="'conv2/bias' has shape"):
        lora.init(base, targets=["conv2/.*"], rank=2, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="rank 4 exceeds min.* = 3 of 'head/kernel'"):
        lora.init(base, targets=["head/kernel"], rank=4, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        lora.init(base, targets=["head/kernel"], rank=0, key=jax.random.PRNGKey(0))


def test_extract_matches_features_only_forward():
    params = _params()
    feats = features.extract(CNN.apply, {"params": params}, X, batch_size=6)  # padded last batch
    ref = CNN.apply({"params": params}, X, features_only=True)
    assert feats.shape == (16, 20)
    np.testing.assert_allclose(np.asarray(feats), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_head_trainer_equals_a_python_loop_of_the_same_steps():
    feats = jnp.asarray(CNN.apply({"params": _params()}, X, features_only=True))
    tx = optax.adamw(1e-2, weight_decay=1e-3)
    head0 = features.init_head(20, 3)
    key = jax.random.PRNGKey(3)
    head, _, losses = features.fit_head(
        feats, LABEL, tx=tx, steps=6, key=key, head=head0, batch_size=8
    )
    assert losses.shape == (6,)
    # Reference: the same minibatches (epoch e's permutation from fold_in(key, e)) step by step.
    h, s = head0, tx.init(head0)
    for i in range(6):
        epoch, pos = divmod(i, 2)
        rows = jax.random.permutation(jax.random.fold_in(key, epoch), 16)[pos * 8 : pos * 8 + 8]
        loss_fn = lambda h, r=rows: train.cross_entropy(
            features.head_logits(h, feats[r]), LABEL[r]
        ).mean()  # noqa: E731
        g = jax.grad(loss_fn)(h)
        u, s = tx.update(g, s, h)
        h = optax.apply_updates(h, u)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), head, h)
    full, _, full_losses = features.fit_head(feats, LABEL, tx=tx, steps=50, key=key, num_classes=3)
    assert float(full_losses[-1]) < float(full_losses[0])


def test_ridge_head_solves_the_normal_equations():
    rng = np.random.default_rng(0)
    for n, f in ((12, 5), (5, 12)):  # primal and dual forms
        x = rng.normal(size=(n, f)).astype(np.float32)
        y = rng.integers(0, 3, size=n)
        head = features.ridge_head(x, y, num_classes=3, l2=0.5)
        xc = x - x.mean(0)
        t = np.eye(3)[y]
        w = np.linalg.solve(xc.T @ xc + 0.5 * np.eye(f), xc.T @ (t - t.mean(0)))
        np.testing.assert_allclose(np.asarray(head["kernel"]), w, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(head["bias"]), t.mean(0) - x.mean(0) @ w, rtol=1e-3, atol=1e-4
        )
