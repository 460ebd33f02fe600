"""Tests for jaxopt_ft.models: sizes, names, shapes, the trunk/head split and errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxopt_ft import models

KEY = jax.random.key(0)
# Tests that need values but not particular ones init with an "rbg" key: compiling init with
# threefry keys costs ~3x more CPU time, and the suite compiles a dozen models.
FAST_KEY = jax.random.key(0, impl="rbg")

# (name, kwargs, input shape) for every model on the inputs it is meant for.
CASES = [
    ("logistic", {}, (3, 40)),
    ("mlp", {}, (3, 40)),
    ("cnn", {}, (3, 40)),
    ("cnn", {}, (3, 40, 1)),
    ("lenet300", {}, (3, 8, 8, 1)),
    ("lenet300", {}, (3, 32, 32, 3)),
    ("lenet5", {}, (3, 8, 8, 1)),
    ("lenet5", {}, (3, 32, 32, 3)),
    ("resnet", {}, (3, 8, 8, 1)),
    ("resnet", {"stage_widths": (8, 16), "blocks_per_stage": (2, 1)}, (3, 32, 32, 3)),
    ("vit", {"patch_size": 2, "depth": 1}, (3, 8, 8, 1)),
    ("vit", {"pool": "mean", "depth": 1}, (3, 8, 8, 1)),
    ("vit", {"depth": 1}, (3, 32, 32, 3)),
]
CASE_IDS = ["-".join([n, "x".join(map(str, s)), *k]) for n, k, s in CASES]
# One small configuration per family, for checks that only trace shapes.
SMALL_CASES = [
    ("logistic", {}, (2, 40)),
    ("mlp", {}, (2, 40)),
    ("cnn", {}, (2, 40)),
    ("lenet300", {}, (2, 8, 8, 1)),
    ("lenet5", {}, (2, 8, 8, 1)),
    ("resnet", {"stage_widths": (4, 8)}, (2, 8, 8, 1)),
    ("vit", {"hidden": 16, "depth": 1, "mlp_dim": 16}, (2, 8, 8, 1)),
]
SMALL_IDS = [name for name, _, _ in SMALL_CASES]


def _inputs(shape, seed=1):
    # numpy, not jax.random: eager threefry would compile once per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _flat(variables):
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(variables["params"]).items()}


def _shapes(tree):
    return {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(tree).items()}


def test_names_and_registry():
    assert models.NAMES == (
        "logistic", "mlp", "cnn", "lenet300", "lenet5", "resnet", "vit", "transformer1d"
    )  # fmt: skip
    assert isinstance(models.get("cnn"), models.CNN1D)
    assert models.fields("cnn") == ("channels", "width_mult", "num_classes", "initializer")
    for name in models.NAMES:
        assert "num_classes" in models.fields(name)
        assert models.get(name).num_classes == 10


@pytest.mark.parametrize(
    "name, kwargs, shape, expected",
    [
        ("logistic", {}, (1, 40), 410),
        ("mlp", {}, (1, 40), 15_210),
        ("cnn", {}, (1, 40), 5_210),
        ("cnn", {"channels": (64, 64, 64)}, (1, 40), 28_298),
        ("cnn", {"width_mult": 64 / 25}, (1, 40), 28_298),
        ("lenet300", {}, (1, 28, 28, 1), 266_610),
        ("lenet5", {}, (1, 8, 8, 1), 21_386),
        ("lenet5", {}, (1, 32, 32, 3), 136_886),
    ],
)
def test_param_counts(name, kwargs, shape, expected):
    assert models.param_count(models.get(name, **kwargs), shape) == expected


def test_param_count_excludes_batch_stats():
    model = models.get("resnet", stage_widths=(4,), num_classes=2)
    # stem 3*3*1*4 + bn 8, block conv 2*(3*3*4*4) + 2 bn * 8, head 4*2 + 2.
    assert models.param_count(model, (1, 8, 8, 1)) == 36 + 8 + 288 + 16 + 10


def test_cnn_matches_paper_layout():
    params = jax.eval_shape(models.get("cnn").init, KEY, jnp.zeros((1, 40)))["params"]
    assert _shapes(params) == {
        "conv1/kernel": (5, 1, 25),
        "conv1/bias": (25,),
        "conv2/kernel": (3, 25, 25),
        "conv2/bias": (25,),
        "conv3/kernel": (3, 25, 25),
        "conv3/bias": (25,),
        "head/kernel": (125, 10),
        "head/bias": (10,),
    }


def test_mlp_is_the_papers_residual_mlp():
    model = models.get("mlp")
    x = _inputs((4, 40))
    variables = jax.jit(model.init)(FAST_KEY, x)
    p = jax.device_get(variables["params"])
    relu = lambda a: np.maximum(a, 0.0)
    h = relu(np.asarray(x) @ p["dense1"]["kernel"] + p["dense1"]["bias"])
    h = h + relu(h @ p["dense2"]["kernel"] + p["dense2"]["bias"])
    expected = h @ p["head"]["kernel"] + p["head"]["bias"]
    got = jax.jit(model.apply)(variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs, top_level",
    [
        ("logistic", {}, {"head"}),
        ("mlp", {}, {"dense1", "dense2", "head"}),
        ("cnn", {}, {"conv1", "conv2", "conv3", "head"}),
        ("lenet300", {}, {"dense1", "dense2", "head"}),
        ("lenet5", {}, {"conv1", "conv2", "dense1", "dense2", "head"}),
        (
            "resnet",
            {},
            {"stem_conv", "stem_bn", "stage1_block1", "stage2_block1", "stage3_block1", "head"},
        ),
        ("vit", {}, {"patch_embed", "cls_token", "pos_embed", "block1", "block2", "final_ln"}),
        ("vit", {"pool": "mean", "depth": 1}, {"patch_embed", "pos_embed", "block1", "final_ln"}),
    ],
)
def test_param_names(name, kwargs, top_level):
    shape = (1, 40) if name in ("logistic", "mlp", "cnn") else (1, 8, 8, 1)
    variables = jax.eval_shape(models.get(name, **kwargs).init, KEY, jnp.zeros(shape))
    expected = top_level | {"head"}
    assert set(variables["params"]) == expected
    assert set(variables["params"]["head"]) == {"kernel", "bias"}


def test_resnet_block_names():
    model = models.get("resnet", stage_widths=(4, 8), blocks_per_stage=2)
    variables = jax.eval_shape(model.init, KEY, jnp.zeros((1, 8, 8, 1)))
    params, stats = variables["params"], variables["batch_stats"]
    blocks = {k for k in params if k.startswith("stage")}
    assert blocks == {"stage1_block1", "stage1_block2", "stage2_block1", "stage2_block2"}
    assert set(params["stage1_block1"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert set(params["stage2_block1"]) == {"conv1", "bn1", "conv2", "bn2", "proj_conv", "proj_bn"}
    assert set(stats["stage2_block1"]["proj_bn"]) == {"mean", "var"}
    assert "stem_bn" in stats and "stem_bn" in params


def test_vit_block_names():
    variables = jax.eval_shape(models.get("vit", depth=1).init, KEY, jnp.zeros((1, 8, 8, 1)))
    block = variables["params"]["block1"]
    assert set(block) == {"ln1", "attn", "ln2", "mlp_dense1", "mlp_dense2"}
    assert set(block["attn"]) == {"query", "key", "value", "out"}
    assert variables["params"]["pos_embed"].shape == (1, 5, 64)  # 4 patches + class token


@functools.cache
def _run_case(index):
    """Inits case ``index`` with and without the head and runs it, in one compilation."""
    name, kwargs, shape = CASES[index]
    model = models.get(name, **kwargs)

    @jax.jit
    def run(key, x):
        variables = model.init(key, x)
        trunk = model.init(key, x, features_only=True)
        logits = model.apply(variables, x)
        return variables, trunk, logits, model.apply(variables, x, features_only=True)

    return run(FAST_KEY, _inputs(shape))


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_logits_and_features(index):
    batch = CASES[index][2][0]
    variables, _, logits, feats = _run_case(index)
    assert logits.shape == (batch, 10)
    assert feats.ndim == 2 and feats.shape[0] == batch
    assert bool(jnp.all(jnp.isfinite(logits)))
    head = variables["params"]["head"]
    assert head["kernel"].shape == (feats.shape[1], 10)
    from_feats = nn.Dense(10).apply({"params": head}, feats)
    np.testing.assert_allclose(from_feats, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_trunk_init_has_no_head_and_matches_full_init(index):
    variables, trunk, _, _ = _run_case(index)
    trunk_params = trunk.get("params", {})  # the logistic model's trunk has no params
    assert "head" not in trunk_params
    without_head = {k: v for k, v in variables["params"].items() if k != "head"}
    jax.tree.map(np.testing.assert_array_equal, trunk_params, without_head)
    assert jax.tree.structure(trunk.get("batch_stats", {})) == jax.tree.structure(
        variables.get("batch_stats", {})
    )


def _out_shape(model, shape, **kwargs):
    """The output shape of ``model`` on ``shape`` inputs, traced without computing."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, KEY, x)
    return jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x).shape


@pytest.mark.parametrize("name, kwargs, shape", SMALL_CASES, ids=SMALL_IDS)
def test_num_classes(name, kwargs, shape):
    model = models.get(name, num_classes=3, **kwargs)
    assert _out_shape(model, shape) == (2, 3)


@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (2, 7, 9, 3), (2, 8, 8)])
@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet"])
def test_image_models_take_any_image_size(name, shape):
    assert _out_shape(models.get(name), shape) == (2, 10)


def test_init_is_deterministic_given_key():
    # Params depend on the key alone: not on the batch, its values or the model instance.
    init = jax.jit(lambda key, x: models.get("cnn").init(key, x))
    a = init(FAST_KEY, jnp.zeros((2, 40)))
    b = init(FAST_KEY, _inputs((5, 40)))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = init(jax.random.key(1, impl="rbg"), jnp.zeros((2, 40)))
    for layer in ("conv1", "conv3", "head"):
        assert not np.array_equal(a["params"][layer]["kernel"], c["params"][layer]["kernel"])


def test_narrow_cnn_shapes():
    model = models.get("cnn", channels=(20, 25, 10))
    shapes = _shapes(jax.eval_shape(model.init, KEY, jnp.zeros((1, 40)))["params"])
    assert shapes["conv1/kernel"] == (5, 1, 20)
    assert shapes["conv2/kernel"] == (3, 20, 25)
    assert shapes["conv3/kernel"] == (3, 25, 10)
    assert shapes["conv3/bias"] == (10,)
    assert shapes["head/kernel"] == (50, 10)


def test_narrow_cnn_with_sliced_params_equals_masked_wide_cnn():
    # What structured-pruning compaction relies on: removing channels from the kernels, biases
    # and the next layer's inputs (the head's rows are position * channels + channel) gives the
    # same outputs as zeroing those channels in the wide model.
    wide = models.get("cnn")
    x = _inputs((4, 40))
    p = jax.device_get(jax.jit(wide.init)(FAST_KEY, x)["params"])
    keep = [np.arange(0, 25, 2), np.arange(25)[::-1][:20], np.array([1, 4, 9, 16, 24])]
    masked = jax.tree.map(np.copy, p)
    for i, k in enumerate(keep):
        drop = np.setdiff1d(np.arange(25), k)
        masked[f"conv{i + 1}"]["kernel"][..., drop] = 0.0
        masked[f"conv{i + 1}"]["bias"][drop] = 0.0
    narrow_params = {}
    in_keep = np.array([0])
    for i, k in enumerate(keep):
        name = f"conv{i + 1}"
        kernel = p[name]["kernel"][:, in_keep][..., k]
        narrow_params[name] = {"kernel": kernel, "bias": p[name]["bias"][k]}
        in_keep = k
    head = p["head"]["kernel"].reshape(5, 25, 10)[:, keep[-1]].reshape(-1, 10)
    narrow_params["head"] = {"kernel": head, "bias": p["head"]["bias"]}
    narrow = models.get("cnn", channels=tuple(len(k) for k in keep))
    expected = jax.jit(wide.apply)({"params": masked}, x)
    got = jax.jit(narrow.apply)({"params": narrow_params}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_width_mult_rounds_widths():
    assert models.get("cnn", width_mult=0.5).effective_channels == (13, 13, 13)
    assert models.get("mlp", width_mult=1.5).effective_hidden == (150, 150)
    assert models.get("cnn", channels=(1, 2), width_mult=0.1).effective_channels == (1, 1)
    model = models.get("mlp", width_mult=0.5)
    params = jax.eval_shape(model.init, KEY, jnp.zeros((1, 40)))["params"]
    assert params["dense2"]["kernel"].shape == (50, 50)
    assert params["head"]["kernel"].shape == (50, 10)


def test_narrow_mlp_lenet_and_resnet_shapes():
    mlp = models.get("mlp", hidden=(30, 20, 7), residual=False)
    p = _shapes(jax.eval_shape(mlp.init, KEY, jnp.zeros((1, 40)))["params"])
    assert [p[f"dense{i}/kernel"] for i in (1, 2, 3)] == [(40, 30), (30, 20), (20, 7)]
    lenet = models.get("lenet5", channels=(3, 5), hidden=(11, 9))
    p = _shapes(jax.eval_shape(lenet.init, KEY, jnp.zeros((1, 8, 8, 1)))["params"])
    assert p["conv2/kernel"] == (5, 5, 3, 5)
    assert p["dense1/kernel"] == (2 * 2 * 5, 11)
    assert p["head/kernel"] == (9, 10)
    resnet = models.get("resnet", stage_widths=(8, 16), stem_width=6, inner_widths=(3, 5))
    variables = jax.eval_shape(resnet.init, KEY, jnp.zeros((1, 8, 8, 1)))
    p = _shapes(variables["params"])
    assert p["stem_conv/kernel"] == (3, 3, 1, 6)
    assert p["stage1_block1/conv1/kernel"] == (3, 3, 6, 3)
    assert p["stage1_block1/bn1/scale"] == (3,)
    assert p["stage1_block1/conv2/kernel"] == (3, 3, 3, 8)
    assert p["stage1_block1/proj_conv/kernel"] == (1, 1, 6, 8)  # stem narrower than stage
    assert p["stage2_block1/conv1/kernel"] == (3, 3, 8, 5)
    assert _shapes(variables["batch_stats"])["stage2_block1/bn1/mean"] == (5,)


@pytest.mark.parametrize("name, kwargs, shape", SMALL_CASES, ids=SMALL_IDS)
def test_layer_order_lists_every_weight_layer_once(name, kwargs, shape):
    model = models.get(name, **kwargs)
    params = jax.eval_shape(model.init, KEY, jnp.zeros(shape))["params"]
    kernels = [k for k in _shapes(params) if k.endswith("/kernel")]
    order = model.layer_order()
    assert sorted(order) == sorted(k.removesuffix("/kernel") for k in kernels)
    assert order[-1] == "head"


def test_layer_order_is_forward_order():
    resnet = models.get("resnet", stage_widths=(4, 8), blocks_per_stage=(2, 1), stem_width=3)
    assert resnet.layer_order() == (
        "stem_conv",
        "stage1_block1/conv1",
        "stage1_block1/conv2",
        "stage1_block1/proj_conv",  # the stem is narrower than the stage
        "stage1_block2/conv1",
        "stage1_block2/conv2",
        "stage2_block1/conv1",
        "stage2_block1/conv2",
        "stage2_block1/proj_conv",
        "head",
    )
    params = jax.eval_shape(resnet.init, KEY, jnp.zeros((1, 8, 8, 1)))["params"]
    kernels = {k.removesuffix("/kernel") for k in _shapes(params) if k.endswith("/kernel")}
    assert set(resnet.layer_order()) == kernels
    lenet = models.get("lenet5", hidden=(7,))
    assert lenet.layer_order() == ("conv1", "conv2", "dense1", "head")
    vit = models.get("vit", depth=1).layer_order()
    assert vit[:3] == ("patch_embed", "block1/attn/query", "block1/attn/key")
    assert vit[-3:] == ("block1/mlp_dense1", "block1/mlp_dense2", "head")


def _assert_torch_uniform(x, fan_in, *, deciles=False):
    """Entries of ``x`` within PyTorch's ``1/sqrt(fan_in)`` bound and reaching close to it."""
    x, bound = np.asarray(x).ravel(), 1.0 / np.sqrt(fan_in)
    assert np.abs(x).max() <= bound
    assert np.abs(x).max() > 0.9 * bound
    if deciles:  # uniform: each tenth of [-bound, bound] holds a tenth, within 5 std errors
        counts, _ = np.histogram(x, bins=10, range=(-bound, bound))
        np.testing.assert_allclose(counts / x.size, 0.1, atol=5 * np.sqrt(0.09 / x.size))


def test_torch_initializer_dense_and_conv():
    mlp = models.get("lenet300", hidden=(500,), initializer="torch")
    p = jax.jit(mlp.init)(FAST_KEY, jnp.zeros((1, 20, 20)))["params"]
    _assert_torch_uniform(p["dense1"]["kernel"], 400, deciles=True)  # 400 x 500 weights
    _assert_torch_uniform(p["dense1"]["bias"], 400)
    _assert_torch_uniform(p["head"]["kernel"], 500)
    cnn = models.get("lenet5", channels=(6, 64), hidden=(), initializer="torch")
    p = jax.jit(cnn.init)(FAST_KEY, jnp.zeros((1, 8, 8, 1)))["params"]
    _assert_torch_uniform(p["conv1"]["kernel"], 5 * 5 * 1)
    _assert_torch_uniform(p["conv2"]["kernel"], 5 * 5 * 6, deciles=True)  # 9,600 weights
    _assert_torch_uniform(p["conv2"]["bias"], 5 * 5 * 6)
    one_d = models.get("cnn", channels=(32, 32, 32), initializer="torch")
    p = jax.jit(one_d.init)(FAST_KEY, jnp.zeros((1, 40)))["params"]
    _assert_torch_uniform(p["conv2"]["kernel"], 3 * 32)
    _assert_torch_uniform(p["head"]["kernel"], 5 * 32)
    # flax's defaults differ: lecun-normal kernels exceed the bound, biases start at zero.
    p = jax.jit(models.get("lenet300", hidden=(500,)).init)(FAST_KEY, jnp.zeros((1, 20, 20)))
    assert np.abs(p["params"]["dense1"]["kernel"]).max() > 1.0 / np.sqrt(400)
    assert not np.any(p["params"]["dense1"]["bias"])


def test_torch_initializer_leaves_norms_and_embeddings_alone():
    def init(name, **kw):
        shape = (1, 8, 8, 1)
        return jax.jit(models.get(name, **kw).init)(FAST_KEY, jnp.zeros(shape))

    flax_vit, torch_vit = init("vit", depth=1), init("vit", depth=1, initializer="torch")
    for path in ("pos_embed", "cls_token", "block1/ln1/scale", "final_ln/bias"):
        np.testing.assert_array_equal(_flat(flax_vit)[path], _flat(torch_vit)[path])
    _assert_torch_uniform(_flat(torch_vit)["block1/attn/query/kernel"], 64)
    _assert_torch_uniform(_flat(torch_vit)["block1/attn/out/bias"], 64)
    _assert_torch_uniform(_flat(torch_vit)["block1/mlp_dense2/kernel"], 128)
    _assert_torch_uniform(_flat(torch_vit)["patch_embed/kernel"], 4 * 4 * 1)
    torch_resnet = init("resnet", stage_widths=(4, 8), initializer="torch")
    flax_resnet = init("resnet", stage_widths=(4, 8))
    for path in ("stem_bn/scale", "stage2_block1/bn1/bias", "stage2_block1/proj_bn/scale"):
        np.testing.assert_array_equal(_flat(flax_resnet)[path], _flat(torch_resnet)[path])
    _assert_torch_uniform(_flat(torch_resnet)["stage2_block1/conv2/kernel"], 3 * 3 * 8)
    _assert_torch_uniform(_flat(torch_resnet)["stage2_block1/proj_conv/kernel"], 4)


def test_vit_mlp_dims_per_block():
    vit = models.get("vit", hidden=16, depth=2, mlp_dim=32, mlp_dims=(5, 7))
    p = _shapes(jax.eval_shape(vit.init, KEY, jnp.zeros((1, 8, 8, 1)))["params"])
    assert p["block1/mlp_dense1/kernel"] == (16, 5)
    assert p["block2/mlp_dense2/kernel"] == (7, 16)
    assert models.get("vit", depth=3, mlp_dim=32).block_mlp_dims == (32, 32, 32)


def test_unit_groups_and_narrowed_use_the_built_widths():
    cnn = models.get("cnn", width_mult=0.5)  # built with 13 channels per conv
    assert [(g.name, g.size) for g in cnn.unit_groups()] == [
        ("conv1", 13),
        ("conv2", 13),
        ("conv3", 13),
    ]
    narrow = cnn.narrowed({"conv2": 4})
    assert (narrow.channels, narrow.width_mult) == ((13, 4, 13), 1.0)
    assert models.get("mlp", hidden=(8, 8)).narrowed({"hidden": 3}).hidden == (3, 3)
    lenet = models.get("lenet5", channels=(4, 8), hidden=(12, 8)).narrowed({"dense1": 5})
    assert (lenet.channels, lenet.hidden) == ((4, 8), (5, 8))
    resnet = models.get("resnet", stage_widths=(4, 8))
    assert resnet.narrowed({"stage2_block1/conv1": 2}).inner_widths == (4, 2)
    vit = models.get("vit", depth=2, mlp_dim=16)
    assert vit.narrowed({"block2/mlp": 5}).block_mlp_dims == (16, 5)
    with pytest.raises(ValueError, match=r"CNN1D has no unit groups \['conv9'\].*Fix"):
        cnn.narrowed({"conv9": 1})


def test_resnet_batch_stats_update_in_train_mode_only():
    model = models.get("resnet", stage_widths=(4, 8))
    x = _inputs((4, 8, 8, 3)) * 3.0 + 1.0
    variables = jax.jit(model.init)(FAST_KEY, x)
    stats = variables["batch_stats"]

    @functools.partial(jax.jit, static_argnames="train")
    def apply(variables, x, train):
        return model.apply(variables, x, train=train, mutable=["batch_stats"])

    logits, updates = apply(variables, x, True)
    assert logits.shape == (4, 10)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), stats, updates["batch_stats"])
    assert all(jax.tree.leaves(changed))

    eval_logits, eval_updates = apply(variables, x, False)
    jax.tree.map(np.testing.assert_array_equal, stats, eval_updates["batch_stats"])
    # Eval normalises with running averages, so an example's logits ignore the rest of the
    # batch; train mode normalises with batch statistics, so they do not.
    other = x.at[1:].set(0.0)
    np.testing.assert_allclose(apply(variables, other, False)[0][0], eval_logits[0], atol=1e-5)
    assert not np.allclose(apply(variables, other, True)[0][0], logits[0], atol=1e-3)
    with pytest.raises(Exception, match="batch_stats"):  # train mode needs mutable batch_stats
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)


def test_get_accepts_lists_from_configs():
    model = models.get("cnn", channels=[8, 8, 8])
    assert model.channels == (8, 8, 8)
    assert models.param_count(model, (1, 40)) == 5 * 8 + 8 + 2 * (3 * 8 * 8 + 8) + 40 * 10 + 10


def test_unknown_name():
    with pytest.raises(ValueError, match=r"'resnet50'.*Accepted: logistic, mlp, cnn"):
        models.get("resnet50")
    with pytest.raises(ValueError, match="Accepted"):
        models.fields("nope")


def test_unknown_kwarg_names_it_and_the_accepted_fields():
    with pytest.raises(ValueError, match=r"'chanels'.*Accepted: channels, width_mult"):
        models.get("cnn", chanels=(8, 8, 8))
    with pytest.raises(ValueError, match="'name'"):
        models.get("mlp", name="x")


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("cnn", {"channels": (25, 0, 25)}, r"cnn\.channels=\(25, 0, 25\)"),
        ("cnn", {"channels": ()}, "non-empty"),
        ("cnn", {"width_mult": 0.0}, r"cnn\.width_mult=0\.0"),
        ("mlp", {"hidden": (100, 50)}, "residual=False"),
        ("mlp", {"num_classes": 0}, r"mlp\.num_classes=0"),
        ("lenet300", {"hidden": (300, 2.5)}, "lenet300.hidden"),
        ("resnet", {"blocks_per_stage": (1, 1)}, "one count per stage"),
        ("resnet", {"inner_widths": (4, 4)}, "one width per block"),
        ("resnet", {"stem_width": -1}, r"resnet\.stem_width=-1"),
        ("vit", {"hidden": 30, "num_heads": 4}, "num_heads"),
        ("vit", {"pool": "max"}, "Accepted: cls, mean"),
        ("vit", {"mlp_dims": (4,)}, "one width per block"),
        (
            "cnn",
            {"initializer": "xavier"},
            r"cnn\.initializer='xavier' is unknown\. Accepted: flax, torch",
        ),
        ("resnet", {"initializer": None}, r"resnet\.initializer=None is unknown"),
        ("vit", {"depth": True}, r"vit\.depth=True"),
    ],
)
def test_bad_field_values(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.get(name, **kwargs)


def test_bad_input_shapes():
    with pytest.raises(ValueError, match=r"patch_size=4 does not tile 6x6"):
        jax.eval_shape(models.get("vit").init, KEY, jnp.zeros((1, 6, 6, 1)))
    with pytest.raises(ValueError, match=r"\(B, L\) or \(B, L, C\)"):
        jax.eval_shape(models.get("cnn").init, KEY, jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        jax.eval_shape(models.get("lenet5").init, KEY, jnp.zeros((1, 40)))
