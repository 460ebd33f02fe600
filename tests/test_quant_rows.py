"""The quantization rows of ``compress`` (on a small trained model) and the ``bits_sweep`` CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli, load_config

from jaxopt_ft import experiments, models, quant
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import bits_sweep, fields, pruning, quantizing
from jaxopt_ft.experiments.settings import CompressSettings, base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "configs", "mnist1d_bits_sweep.py")


def small_config(**quant_overrides):
    config = base_config("compress")
    config.model.channels = (32, 32, 32)
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 200
    config.checkpoint.every_steps = 0
    config.eval.timing_repeats = 1
    config.prune.steps = 60
    for key, value in {"qat_steps": 20, "calibration_batches": 3, **quant_overrides}.items():
        config.quant[key] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 32-channel CNN trained 200 steps, and a 90 % sparse copy fine-tuned 60 steps."""
    s = experiments.parse(small_config())
    ctx = pruning.make_context(s, str(tmp_path_factory.mktemp("quant_rows")), progress=False)
    dense, dense_row = pruning.dense_phase(ctx)
    pruned, masks = pruning.prune_from(
        ctx, dense, phase="prune", steps=60, key=jax.random.PRNGKey(1), sparsity=0.9,
        scorer="magnitude", scope="global", distribution="uniform",
    )  # fmt: skip
    rows = quantizing.quant_rows(ctx, dense=dense, pruned=pruned, masks=masks)
    pruning.time_rows(ctx, rows)
    return ctx, dense, pruned, masks, {r["name"]: r for r in rows}, dense_row["test_accuracy"]


def test_rows_fields_sizes_and_agreement(trained):
    ctx, dense, pruned, masks, rows, dense_acc = trained
    assert list(rows) == ["int8_ptq", "int8_weights", "qat_int4", "pruned_quantized"]
    dense_bytes = 4 * tree_lib.count_params(dense.params)
    assert dense_bytes == tree_lib.tree_bytes(dense.params) == 4 * 8010
    for name, row in rows.items():
        for key in ("test_accuracy", "size_bytes", "compression", "params", "nonzero_params"):
            assert key in row, (name, key)
        assert row["params"] == 8010 and 0 < row["nonzero_params"] <= 8010
        assert row["compression"] == dense_bytes / row["size_bytes"]
        # size_bytes is the file that ships, read back for the evaluation.
        path = os.path.join(ctx.workdir, "quant", f"{name}.jfq")
        assert os.path.getsize(path) == row["size_bytes"], name
        assert row["test_accuracy"] >= 0.2 and row["step_ms"] > 0  # chance is 0.1
    ptq, weights, qat4, pq = (rows[k] for k in rows)
    assert ptq["inference"] == "int8" and ptq["agreement_with_fake_quant"] >= 0.99
    assert weights["inference"] == "float" and "agreement_with_fake_quant" not in weights
    assert ptq["size_bytes"] < 0.3 * dense_bytes and weights["size_bytes"] < ptq["size_bytes"]
    assert ptq["test_accuracy"] >= dense_acc - 0.02
    assert weights["test_accuracy"] >= dense_acc - 0.02
    # int4 middle layers (conv2, conv3) halve their bytes; conv1 and head stay at 8 bits.
    assert (qat4["weight_bits"], qat4["first_last_bits"], qat4["qat_steps"]) == (4, 8, 20)
    assert ptq["size_bytes"] - qat4["size_bytes"] == pytest.approx((3072 + 3072) / 2, abs=64)
    assert qat4["agreement_with_fake_quant"] >= 0.99
    assert pq["encoding"] == "relative" and pq["size_bytes"] < qat4["size_bytes"] / 2
    assert pq["nonzero_params"] <= tree_lib.count_nonzero(pruned.params)


def test_pruned_export_keeps_the_zeros(trained):
    ctx, _, pruned, masks, rows, _ = trained
    shipped = quant.load_quantized(
        os.path.join(ctx.workdir, "quant", "pruned_quantized.jfq"), dequantized=True
    )
    flat_masks = tree_lib.flatten(masks)
    flat = tree_lib.flatten(shipped["params"])
    assert set(flat) == set(flat_masks)
    for path, m in flat_masks.items():
        assert not np.any(np.asarray(flat[path])[~np.asarray(m)]), path
    assert set(tree_lib.flatten(shipped["act_ranges"])) == {"conv1", "conv2", "conv3", "head"}
    assert rows["pruned_quantized"]["nonzero_params"] == tree_lib.count_nonzero(shipped["params"])


def test_rerun_restores_the_qat_phase(trained):
    ctx, dense, _, _, _, _ = trained
    for phase in ("qat", "pruned_qat"):
        assert os.path.isdir(os.path.join(ctx.workdir, "checkpoints", phase)), phase
    weights = quantizing.layer_bits(ctx.model, dense.params, 4, end_bits=8)
    acts = quantizing.layer_bits(ctx.model, dense.params, 8)
    before = jax.tree.map(np.copy, dense.params)
    params, stats = quantizing.qat(ctx, dense.params, {}, weights=weights, acts=acts, phase="qat")
    assert stats == {}
    jax.tree.map(np.testing.assert_array_equal, dense.params, before)  # left untouched
    restored = quant.quantize_params(params, quantizing.weight_rules(weights))
    shipped = quant.load_quantized(os.path.join(ctx.workdir, "quant", "qat_int4.jfq"))
    a, b = tree_lib.flatten(shipped["params"]), tree_lib.flatten(restored)  # QArray fields
    assert a.keys() == b.keys() and "conv2/kernel/values" in a
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)


def test_layer_bits_and_rules():
    model = models.get("cnn", num_classes=10, channels=(4, 4, 4))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 40)))["params"]
    bits = quantizing.layer_bits(model, params, 4, end_bits=8)
    assert bits == {"conv1": 8, "conv2": 4, "conv3": 4, "head": 8}
    assert quantizing.layer_bits(model, params, 3) == dict.fromkeys(bits, 3)
    # The ResNet's head sorts first by name; the declared order keeps the stem first.
    resnet = models.get("resnet", num_classes=10)
    shapes = jax.eval_shape(resnet.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    ends = quantizing.layer_bits(resnet, shapes["params"], 4, end_bits=8)
    assert [p for p, b in ends.items() if b == 8] == ["stem_conv", "head"]
    specs = quant.weight_specs(params, quantizing.weight_rules(bits))
    assert {p: s and s.bits for p, s in specs.items()} == {
        "conv1/bias": None,
        "conv1/kernel": 8,
        "conv2/bias": None,
        "conv2/kernel": 4,
        "conv3/bias": None,
        "conv3/kernel": 4,
        "head/bias": None,
        "head/kernel": 8,
    }
    logistic = models.get("logistic", num_classes=10)
    params = {"head": {"kernel": jnp.zeros((40, 10)), "bias": jnp.zeros(10)}}
    assert quantizing.layer_bits(logistic, params, 4, end_bits=8) == {"head": 8}


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("bits", 1, "quant.bits=1"),
        ("bits", 17, "quant.bits=17"),
        ("qat_bits", 20, "quant.qat_bits=20"),
        ("first_last_bits", 1, "quant.first_last_bits"),
        ("calibration_batches", 0, "quant.calibration_batches"),
        ("qat_steps", -1, "quant.qat_steps"),
        ("learning_rate", 0.0, "quant.learning_rate"),
        ("observer", "mean", "quant.observer='mean'"),
    ],
)
def test_validate_quant_names_the_bad_value(key, value, fragment):
    config = small_config()
    config.quant[key] = value
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        experiments.parse(config)


def test_quant_defaults_live_in_the_settings():
    config = base_config("compress")
    del config.quant  # a config without the section gets every default
    s = experiments.parse(config)
    assert s.quant == CompressSettings().quant
    assert (s.quant.bits, s.quant.qat_bits, s.quant.observer) == (8, 4, "minmax")
    config = base_config("compress")
    config.quant.bitz = 3
    with pytest.raises(ValueError, match="no key quant.bitz"):
        experiments.parse(config)
    assert ("quant.bits", 8) in [row[:2] for row in fields.describe(CompressSettings)]


def test_sweep_settings_reject_bad_widths_and_methods():
    config = load_config(SWEEP)
    assert experiments.parse(config).sweep.bits == (2, 3, 4, 6, 8)
    for widths, fragment in (((2, 17), r"sweep\.bits\[1\]=17"), ((4, 4), "duplicates")):
        config.sweep.bits = widths
        with pytest.raises(ValueError, match=fragment):
            experiments.parse(config)
    config.sweep.bits = (4,)
    config.sweep.methods = ("ptq", "gptq")
    with pytest.raises(ValueError, match="gptq"):
        experiments.parse(config)


def test_bits_sweep_end_to_end(tmp_path):
    wd = tmp_path / "sweep"
    r = cli(
        f"--config={SWEEP}",
        f"--workdir={wd}",
        "--config.model.channels=(16, 16, 16)",
        "--config.train.steps=120",
        "--config.quant.qat_steps=10",
        "--config.quant.calibration_batches=2",
        "--config.sweep.bits=(2, 8)",
        "--noprogress",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert report["experiment"] == "bits_sweep"
    names = [f"{m}@{b}" for m in ("ptq_weights", "ptq", "qat") for b in (2, 8)]
    assert [row["name"] for row in report["rows"]] == names
    dense_bytes = report["dense_size_bytes"]
    assert dense_bytes == 4 * 2474
    rows = {row["name"]: row for row in report["rows"]}
    for row in rows.values():
        assert row["method"] in bits_sweep.METHODS and row["bits"] in (2, 8)
        if row["bits"] == 8:
            assert row["test_accuracy"] >= 0.3  # chance is 0.1
        assert row["compression"] == dense_bytes / row["size_bytes"]
    # conv1 and head stay at 8 bits; conv2 and conv3 pack two 2-bit values per byte.
    for method in bits_sweep.METHODS:
        assert rows[f"{method}@8"]["size_bytes"] - rows[f"{method}@2"]["size_bytes"] == 768
    assert abs(rows["ptq_weights@8"]["test_accuracy"] - report["dense_test_accuracy"]) <= 0.01
    for b in (2, 8):
        assert (wd / "checkpoints" / f"qat@{b}").is_dir()
    assert report["plots"] == ["bits_accuracy.png"]
    assert (wd / "bits_accuracy.png").read_bytes()[:4] == b"\x89PNG"
