"""Transformers: every matmul (attention's DenseGeneral projections, Einsum) is an op that
quantization, N:M pruning, LoRA and head pruning reach; checked against NumPy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxopt_ft import experiments, models, ops, prune, quant
from jaxopt_ft.experiments import compress
from jaxopt_ft.finetune import lora
from tests.helpers import load_config

RNG = np.random.default_rng(0)
VIT = models.get("vit", patch_size=2, hidden=16, depth=2, num_heads=4, mlp_dim=32)
X_IMG = RNG.normal(size=(64, 8, 8)).astype(np.float32)


class Mixer(nn.Module):
    """A DenseGeneral projection to heads, an Einsum over them, and an Embed table."""

    @nn.compact
    def __call__(self, x, ids=None, *, train=False):
        h = nn.DenseGeneral((2, 3), name="proj")(x)  # kernel (5, 2, 3)
        h = nn.Einsum((2, 3, 4), "bthk,hkc->btc", name="mix")(h)  # contracts h, k
        if ids is not None:
            h = h + nn.Embed(7, 4, name="embed")(ids)
        return h.mean(1)


MIXER = Mixer()
X_SEQ = RNG.normal(size=(6, 3, 5)).astype(np.float32)
IDS = RNG.integers(0, 7, size=(6, 3))
MIXER_VARS = MIXER.init(jax.random.PRNGKey(0), X_SEQ, IDS)


def _vit_vars(model=VIT, x=X_IMG, seed=1):
    return model.init(jax.random.PRNGKey(seed), x[:1])


# NumPy references of uniform affine quantization (round half to even, as np.round).
def np_fake_quant_sym(w, bits, keep):
    red = tuple(i for i in range(w.ndim) if i not in keep)
    qmax = 2 ** (bits - 1) - 1
    scale = np.max(np.abs(w), axis=red, keepdims=True) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def np_fake_quant_asym(x, bits):
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax
    zp = np.clip(np.round(-lo / scale), 0, qmax)
    return (np.clip(np.round(x / scale) + zp, 0, qmax) - zp) * scale


def test_find_ops_names_kinds_and_axes():
    found = ops.find_ops(MIXER, MIXER_VARS, X_SEQ, IDS)
    assert list(found) == ["proj", "mix", "embed"]
    assert [o.kind for o in found.values()] == ["dense_general", "einsum", "embed"]
    assert found["proj"].equation == "abc,cde->abde"
    assert (found["proj"].contract_axes, found["proj"].out_axes) == ((0,), (1, 2))
    assert (found["mix"].contract_axes, found["mix"].out_axes) == ((0, 1), (2,))
    assert found["embed"].weight == "embed/embedding"
    vit_ops = ops.find_ops(VIT, _vit_vars(), X_IMG[:2])
    assert len(vit_ops) == 14  # patch_embed, 2 x (4 projections + 2 MLP), head
    assert vit_ops["block1/attn/query"].out_axes == (1, 2)  # per head and channel
    assert vit_ops["block1/attn/out"].contract_axes == (0, 1)
    assert ops.weight_fraction(vit_ops, {o.weight for o in vit_ops.values()}) == 1.0


def test_fake_quant_of_dense_general_and_einsum_equals_hand_quantized_operands():
    params = jax.tree.map(np.asarray, MIXER_VARS["params"])
    axes = ops.kernel_axes(ops.find_ops(MIXER, MIXER_VARS, X_SEQ))
    rules = [(".*kernel", 8), (".*", None)]
    fn = quant.fake_quant_apply_fn(MIXER, weight_bits=rules, act_bits=8, weight_axis=axes)
    got = np.asarray(jax.jit(fn)({"params": params}, X_SEQ))
    # By hand: per-tensor asymmetric inputs (this batch's range), per-output-channel weights.
    kp, km = params["proj"]["kernel"], params["mix"]["kernel"]
    h = np.einsum("btc,cde->btde", np_fake_quant_asym(X_SEQ, 8), np_fake_quant_sym(kp, 8, (1, 2)))
    h = h + params["proj"]["bias"]
    y = np.einsum("bthk,hkc->btc", np_fake_quant_asym(h, 8), np_fake_quant_sym(km, 8, (2,)))
    want = (y + params["mix"]["bias"]).mean(1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_int8_inference_of_einsum_and_dense_general_matches_fake_quant():
    axes = ops.kernel_axes(ops.find_ops(MIXER, MIXER_VARS, X_SEQ))
    ranges = quant.calibrate(MIXER, MIXER_VARS, [X_SEQ])
    qp = quant.quantize_params(MIXER_VARS["params"], 8, axis=axes)
    fq = quant.fake_quant_apply_fn(MIXER, act_ranges=ranges, weight_axis=axes)
    i8 = quant.int8_apply_fn(MIXER, act_ranges=ranges)
    a = np.asarray(fq(MIXER_VARS, X_SEQ))
    b = np.asarray(i8({"params": qp}, X_SEQ))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_int8_attention_agrees_with_fake_quant_on_predictions():
    variables = _vit_vars()
    axes = ops.kernel_axes(ops.find_ops(VIT, variables, X_IMG[:1]))
    ranges = quant.calibrate(VIT, variables, [X_IMG[:32]])
    qp = quant.quantize_params(variables["params"], 8, axis=axes)
    assert quant.is_qarray(qp["block1"]["attn"]["query"]["kernel"])
    fq = jax.jit(quant.fake_quant_apply_fn(VIT, act_ranges=ranges, weight_axis=axes))
    i8 = jax.jit(quant.int8_apply_fn(VIT, act_ranges=ranges))
    a, b = np.asarray(fq(variables, X_IMG)), np.asarray(i8({"params": qp}, X_IMG))
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.995
    np.testing.assert_allclose(a, b, atol=1e-4)
    # Quantization really acts on attention: the fake-quant model is not the float one.
    assert np.max(np.abs(a - np.asarray(VIT.apply(variables, X_IMG)))) > 1e-4


def test_int8_rejects_scales_along_contraction_axes():
    variables = _vit_vars()
    qp = quant.quantize_params(variables["params"], 8, axis=0)  # axis 0 is contracted
    with pytest.raises(ValueError, match="output axes"):
        quant.int8_apply_fn(VIT)({"params": qp}, X_IMG[:2])


def test_act_rules_naming_no_op_or_an_embedding_are_errors():
    with pytest.raises(ValueError, match="nothing|match"):
        quant.act_bits_map(MIXER_VARS["params"], [("attn/nothing", 8), (".*", 8)])
    with pytest.raises(ValueError, match="embedding op 'embed'.*integer ids"):
        quant.act_bits_map(MIXER_VARS["params"], [("embed", 8), (".*", 8)])
    # The embedding table itself quantizes (weight-only, one scale per row).
    qp = quant.quantize_params(MIXER_VARS["params"], [("embed/embedding", 8), (".*", None)], axis=0)
    assert quant.is_qarray(qp["embed"]["embedding"])


def test_nm_masks_run_along_each_kernels_contraction_axis():
    variables = _vit_vars()
    found = ops.find_ops(VIT, variables, X_IMG[:1])
    axis = {p: ax[-1] for p, ax in ops.contraction_axes(found).items()}
    params = variables["params"]
    chosen = {".*attn/(query|out)/kernel": True}
    prunable = prune.select_prunable(params, [(k, v) for k, v in chosen.items()] + [(".*", False)])
    masks = prune.compute_masks(params, nm=(2, 4), nm_axis=axis, prunable=prunable)
    out = np.asarray(masks["block1"]["attn"]["out"]["kernel"])  # (heads, head_dim, hidden)
    assert out.shape == (4, 4, 16)
    np.testing.assert_array_equal(out.sum(axis=1), 2)  # 2 of 4 along head_dim, the contraction
    query = np.asarray(masks["block1"]["attn"]["query"]["kernel"])  # (hidden, heads, head_dim)
    np.testing.assert_array_equal(query.reshape(4, 4, 4, 4).sum(axis=1), 2)  # along hidden


def test_lora_on_attention_kernels_merges_to_the_same_outputs():
    variables = _vit_vars()
    params = variables["params"]
    fan_in = lora.fan_in_axes(ops.find_ops(VIT, variables, X_IMG[:1]))
    targets = [r".*attn/(query|key|value|out)/kernel", r".*mlp_dense\d/kernel"]
    ranks = [(".*attn.*", 2), (".*", 3)]
    ad = lora.init(params, targets=targets, rank=ranks, key=jax.random.PRNGKey(2), fan_in=fan_in)
    q, o = ad["block1"]["attn"]["query"]["kernel"], ad["block1"]["attn"]["out"]["kernel"]
    assert (q["a"].shape, q["b"].shape) == ((16, 2), (2, 16))  # hidden -> heads * head_dim
    assert (o["a"].shape, o["b"].shape) == ((16, 2), (2, 16))  # heads * head_dim -> hidden
    assert ad["block1"]["mlp_dense1"]["kernel"]["a"].shape == (16, 3)
    ad = jax.tree.map(lambda a: a + 0.1 * jnp.ones_like(a), ad)  # B no longer zero
    lp = {"base": params, "lora": ad}
    wrapped = lora.wrap_apply(VIT.apply, alpha=4.0)({"params": lp}, X_IMG[:8])
    merged = VIT.apply({"params": lora.export(lp, alpha=4.0)}, X_IMG[:8])
    np.testing.assert_allclose(np.asarray(wrapped), np.asarray(merged), atol=1e-6)
    assert np.max(np.abs(np.asarray(merged) - np.asarray(VIT.apply(variables, X_IMG[:8])))) > 1e-3
    with pytest.raises(ValueError, match="not its leading axes"):
        mixed = {"mix": ops.Op("mix", "einsum", "mix/kernel", (3, 2, 4), (1,), (0, 2), "x")}
        lora.fan_in_axes(mixed)


def test_head_pruned_compaction_equals_masked_model():
    model, x = VIT, X_IMG[:16]  # transformer1d shares the blocks (its configs' runs compact it)
    params = model.init(jax.random.PRNGKey(3), x[:1])["params"]
    rules = [(".*/heads", 0.5), ("block1/mlp", 0.25)]
    masks = prune.structured_masks(model, params, sparsity=rules)
    small = prune.compact(model, params, masks)
    assert small.model.heads == (2, 2) and small.model.block_mlp_dims == (24, 32)
    assert small.params["block1"]["attn"]["query"]["kernel"].shape == (16, 2, 4)
    assert small.params["block1"]["attn"]["out"]["kernel"].shape == (2, 4, 16)
    masked = model.apply({"params": prune.apply_masks(params, masks)}, x)
    compacted = small.model.apply({"params": small.params}, x)
    assert np.max(np.abs(np.asarray(masked) - np.asarray(compacted))) <= 1e-5
    count = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks))
    assert count == sum(v.size for v in jax.tree.leaves(small.params))


def test_head_scores_are_the_norms_of_each_heads_slices():
    params = _vit_vars()["params"]
    groups = {g.name: g for g in prune.unit_groups(VIT, params)}
    got = prune.unit_scores(params, [groups["block2/heads"]])["block2/heads"]
    attn = params["block2"]["attn"]
    want = np.sqrt(
        sum(
            np.sum(np.asarray(attn[p]["kernel"]) ** 2, axis=(0, 2))
            for p in ("query", "key", "value")
        )
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_removing_every_head_of_a_block_is_an_error():
    config = load_config("configs/digits_vit_compress.py")
    config.prune.structured_rules = ((".*/heads", 0.9), (".*/mlp", 0.5))
    with pytest.raises(ValueError, match=r"removes 4 of the 4 units of group 'block1/heads'"):
        compress.validate(experiments.parse(config))
