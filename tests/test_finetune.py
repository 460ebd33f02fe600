"""Freezing rules, the partitioned optimizer, trainable-only steps and pretrained loading."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxopt_ft import checkpoint, finetune, loop, models, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.finetune import FROZEN

TREE = {
    "conv1": {"kernel": np.zeros((5, 1, 4)), "bias": np.zeros((4,))},
    "conv2": {"kernel": np.zeros((3, 4, 4)), "bias": np.zeros((4,))},
    "head": {"kernel": np.zeros((8, 3)), "bias": np.zeros((3,))},
}
RULES = [("conv1/.*", FROZEN), ("head/.*", "head"), (".*", "trunk")]
CNN = models.get("cnn", channels=(4, 4, 4), num_classes=3)


def _cnn_params(seed=0, model=CNN):
    params, _ = train.init_model(model, jax.random.PRNGKey(seed), jnp.zeros((1, 40)))
    return params


def _batches(n_classes=3, bs=16, seed=0):
    def make(start):
        step = start
        while True:
            rng = np.random.default_rng([seed, step])
            x = rng.normal(size=(bs, 40)).astype(np.float32)
            yield {"x": x, "label": (np.abs(x[:, 0]) * 2).astype(np.int32) % n_classes}
            step += 1

    return make


def _tx(labels, **kw):
    used = set(jax.tree.leaves(labels)) - {FROZEN}
    return finetune.optimizer(labels, {g: optax.adamw(1e-2, weight_decay=0.5, **kw) for g in used})


def test_rules_to_labels_exact():
    labels = finetune.freeze_labels(TREE, RULES)
    assert labels == {
        "conv1": {"kernel": FROZEN, "bias": FROZEN},
        "conv2": {"kernel": "trunk", "bias": "trunk"},
        "head": {"kernel": "head", "bias": "head"},
    }
    assert finetune.count_groups(TREE, labels) == {FROZEN: 24, "trunk": 52, "head": 27}
    assert finetune.count_trainable(TREE, labels) == (79, 24)


def test_uncovered_and_unused_rules_raise():
    with pytest.raises(ValueError, match=r"covered by no rule: \['conv2/bias', 'conv2/kernel'\]"):
        finetune.freeze_labels(TREE, [("conv1/.*", FROZEN), ("head/.*", "head")])
    with pytest.raises(ValueError, match=r"rules matching no parameter: \['dense9/.*'\]"):
        finetune.freeze_labels(TREE, [("dense9/.*", FROZEN), (".*", "trunk")])
    with pytest.raises(ValueError, match="non-empty strings"):
        finetune.freeze_labels(TREE, [(".*", None)])


def test_label_with_no_transform_names_its_paths():
    labels = finetune.freeze_labels(TREE, RULES)
    with pytest.raises(ValueError, match=r"'trunk': \['conv2/bias', 'conv2/kernel'\]"):
        finetune.optimizer(labels, {"head": optax.adam(1e-3)})
    with pytest.raises(ValueError, match=r"no parameter carries: \['lora'\]"):
        finetune.optimizer(
            labels, {"head": optax.adam(1.0), "trunk": optax.adam(1.0), "lora": optax.adam(1.0)}
        )
    with pytest.raises(ValueError, match="set_to_zero"):
        finetune.optimizer(labels, {FROZEN: optax.adam(1.0), "head": optax.adam(1.0)})
    with pytest.raises(ValueError, match="Unknown fine-tuning mode 'half'"):
        finetune.mode_rules("half")


def test_frozen_leaves_bit_identical_after_50_adamw_steps_with_decay(tmp_path):
    params = _cnn_params()
    before = train.numpy_tree(params)
    labels = finetune.freeze_labels(params, RULES)
    state = train.TrainState.create(apply_fn=CNN.apply, params=params, tx=_tx(labels))
    state, _ = loop.fit(
        state,
        train.make_train_step(trainable=finetune.trainable_mask(labels)),
        _batches(),
        steps=50,
        key=jax.random.PRNGKey(1),
        workdir=str(tmp_path),
        phase="partial",
        progress=False,
    )
    after = train.numpy_tree(state.params)
    for p in ("conv1/kernel", "conv1/bias"):
        assert tree_lib.flatten(after)[p].tobytes() == tree_lib.flatten(before)[p].tobytes()
    for p in ("conv2/kernel", "conv3/kernel", "head/kernel"):
        assert not np.array_equal(tree_lib.flatten(after)[p], tree_lib.flatten(before)[p])
    # The common recipe chain(freeze, adamw) still decays the frozen leaves: this check can fail.
    mask = jax.tree.map(lambda label: label == FROZEN, labels)
    naive = optax.chain(
        optax.masked(optax.set_to_zero(), mask), optax.adamw(1e-2, weight_decay=0.5)
    )
    plain = train.TrainState.create(apply_fn=CNN.apply, params=_cnn_params(), tx=naive)
    plain, _ = jax.jit(train.make_train_step())(plain, next(_batches()(0)), jax.random.PRNGKey(1))
    assert not np.array_equal(
        np.asarray(plain.params["conv1"]["kernel"]), before["conv1"]["kernel"]
    )
    # The partitioned state is a checkpointable tree: the finished phase restores exactly.
    fresh = train.TrainState.create(apply_fn=CNN.apply, params=_cnn_params(), tx=_tx(labels))
    again, _ = loop.fit(
        fresh,
        train.make_train_step(trainable=finetune.trainable_mask(labels)),
        _batches(),
        steps=50,
        key=jax.random.PRNGKey(1),
        workdir=str(tmp_path),
        phase="partial",
        progress=False,
    )
    assert int(again.step) == 50
    jax.tree.map(
        np.testing.assert_array_equal,
        train.numpy_tree(again.tree()),
        train.numpy_tree(state.tree()),
    )


def test_linear_probe_opt_state_holds_only_the_head():
    params = _cnn_params()
    labels = finetune.freeze_labels(params, finetune.mode_rules("linear_probe"))
    tx = _tx(labels)
    state = train.TrainState.create(apply_fn=CNN.apply, params=params, tx=tx)
    head = tree_lib.count_params(params["head"])
    assert tree_lib.tree_bytes(state.opt_state) <= 3 * head * 4
    assert tree_lib.tree_bytes(state.opt_state) == 2 * head * 4 + 4  # mu, nu and the count


def _count(jaxpr, name="conv_general_dilated"):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count(sub, name)
    return n


@pytest.mark.parametrize("mode, convs", [("full", 8), ("partial", 6), ("linear_probe", 3)])
def test_only_trainable_leaves_are_differentiated(mode, convs):
    # 3 forward convs; the full step adds 3 kernel and 2 input gradients; freezing conv1 drops
    # its kernel gradient and conv2's input gradient; a frozen trunk has no backward convs,
    # even with a global-norm clip that reads every gradient.
    params = _cnn_params()
    labels = finetune.freeze_labels(params, finetune.mode_rules(mode, partial_frozen=["conv1/.*"]))
    tx = optax.chain(optax.clip_by_global_norm(1.0), _tx(labels))
    state = train.TrainState.create(apply_fn=CNN.apply, params=params, tx=tx)
    batch = next(_batches()(0))
    step = train.make_train_step(trainable=finetune.trainable_mask(labels))
    jaxpr = jax.make_jaxpr(step)(state, batch, jax.random.PRNGKey(0))
    assert _count(jaxpr.jaxpr) == convs


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False, features_only=False):
        h = nn.Dense(8, name="dense1")(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn1")(h))
        h = nn.Dense(8, name="dense2")(h)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn2")(h))
        return h if features_only else nn.Dense(3, name="head")(h)


def _bn_state(rules):
    model = _BN()
    params, bs = train.init_model(model, jax.random.PRNGKey(0), jnp.zeros((1, 40)))
    bs = jax.tree.map(lambda v: v + 0.5, bs)  # non-default statistics
    labels = finetune.freeze_labels(params, rules)
    state = train.TrainState.create(
        apply_fn=model.apply, params=params, tx=_tx(labels), batch_stats=bs
    )
    return state, labels


def test_frozen_trunk_batchnorm_runs_in_inference_mode():
    state, labels = _bn_state(finetune.mode_rules("linear_probe"))
    step = jax.jit(train.make_train_step(trainable=finetune.trainable_mask(labels)))
    before = train.numpy_tree(state.tree())
    batch = next(_batches()(0))
    new, _ = step(state, batch, jax.random.PRNGKey(0))
    after = train.numpy_tree(new.tree())
    jax.tree.map(np.testing.assert_array_equal, after["batch_stats"], before["batch_stats"])
    # The head's gradient is that of the inference-mode forward pass.
    feats = state.apply_fn(state.variables(), batch["x"], features_only=True)
    head_grad = jax.grad(
        lambda h: train.cross_entropy(feats @ h["kernel"] + h["bias"], batch["label"]).mean()
    )(state.params["head"])
    adam_first = -1e-2 * jnp.sign(head_grad["kernel"])  # Adam's first step is lr * sign(g)
    np.testing.assert_allclose(
        after["params"]["head"]["kernel"] - before["params"]["head"]["kernel"],
        adam_first - 1e-2 * 0.5 * before["params"]["head"]["kernel"],
        atol=1e-5,
    )


def test_partly_frozen_batchnorm_keeps_frozen_statistics():
    rules = [("dense1/.*|bn1/.*", FROZEN), (".*", "trunk")]
    state, labels = _bn_state(rules)
    new, _ = jax.jit(train.make_train_step(trainable=finetune.trainable_mask(labels)))(
        state, next(_batches()(0)), jax.random.PRNGKey(0)
    )
    old, upd = train.numpy_tree(state.batch_stats), train.numpy_tree(new.batch_stats)
    np.testing.assert_array_equal(upd["bn1"]["mean"], old["bn1"]["mean"])
    assert not np.array_equal(upd["bn2"]["mean"], old["bn2"]["mean"])


def test_loader_copies_exactly_the_right_leaves():
    source = {"params": _cnn_params(seed=1, model=CNN.clone(num_classes=5))}
    fresh = {"params": _cnn_params(seed=2)}
    out = finetune.load_pretrained(fresh, source, dont_load=["head/.*"])
    flat_out, flat_src, flat_new = (tree_lib.flatten(t["params"]) for t in (out, source, fresh))
    for path, leaf in flat_out.items():
        expected = flat_new[path] if path.startswith("head/") else flat_src[path]
        np.testing.assert_array_equal(leaf, expected)
    assert out["params"]["head"]["kernel"].shape == (20, 3)
    # Without the rule, the 5-class head does not fit the 3-class model.
    with pytest.raises(ValueError, match=r"head/kernel \(checkpoint \(20, 5\), model \(20, 3\)\)"):
        finetune.load_pretrained(fresh, source)
    with pytest.raises(
        ValueError, match=r"dont_load rules matching no parameter: \['classifier/.*'\]"
    ):
        finetune.load_pretrained(fresh, source, dont_load=["head/.*", "classifier/.*"])


def test_loader_reports_every_mismatch_of_another_model():
    other = {"params": _cnn_params(model=models.get("cnn", channels=(4, 6), num_classes=3))}
    fresh = {"params": _cnn_params()}
    with pytest.raises(ValueError) as err:
        finetune.load_pretrained(fresh, other, dont_load=["head/.*"])
    msg = str(err.value)
    assert "missing from the checkpoint: ['params/conv3/bias', 'params/conv3/kernel']" in msg
    assert "params/conv2/kernel (checkpoint (3, 4, 6), model (3, 4, 4))" in msg
    assert "params/conv2/bias (checkpoint (6,), model (4,))" in msg
    mlp = {"params": _cnn_params(model=models.get("mlp", hidden=(8, 8), num_classes=3))}
    with pytest.raises(ValueError, match=r"not in the model: \['params/dense1/bias'"):
        finetune.load_pretrained(fresh, mlp, dont_load=["head/.*"])
    with pytest.raises(TypeError, match="list of regexes"):
        finetune.transplant(fresh["params"], other["params"], dont_load="head/.*")


def test_restore_variables_from_a_fit_checkpoint(tmp_path):
    params = _cnn_params(seed=3, model=CNN.clone(num_classes=5))
    state = train.TrainState.create(apply_fn=CNN.apply, params=params, tx=optax.adam(1e-3))
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpts")
    ckpt.save(7, state.tree())
    ckpt.close()
    for where in (tmp_path / "ckpts", tmp_path / "ckpts" / "7"):
        got = finetune.restore_variables(where)
        assert got["batch_stats"] == {}
        jax.tree.map(np.testing.assert_array_equal, got["params"], train.numpy_tree(params))
    loaded = finetune.load_pretrained(
        {"params": _cnn_params()}, tmp_path / "ckpts", dont_load=["head/.*"]
    )
    np.testing.assert_array_equal(loaded["params"]["conv2"]["kernel"], params["conv2"]["kernel"])
    with pytest.raises(ValueError, match="no step 3"):
        finetune.restore_variables(tmp_path / "ckpts", step=3)
    with pytest.raises(ValueError, match="does not exist"):
        finetune.restore_variables(tmp_path / "nowhere")
