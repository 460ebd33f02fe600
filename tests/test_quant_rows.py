"""The quantization rows of ``compress`` (on a small trained model) and the ``bits_sweep`` CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import cli, load_config

from jaxopt_ft import data, models, prune, quant, train
from jaxopt_ft import tree as tree_lib
from jaxopt_ft.experiments import _quantizing, bits_sweep, common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "configs", "mnist1d_bits_sweep.py")


def small_config(**quant_overrides):
    config = common.base_config()
    config.model.channels = (32, 32, 32)
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 200
    config.checkpoint.every_steps = 0
    config.eval.timing_repeats = 1
    config.quant = _quantizing.quant_config(
        **{"qat_steps": 20, "calibration_batches": 3, **quant_overrides}
    )
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 32-channel CNN trained 200 steps, and a 90 % sparse copy fine-tuned 60 steps."""
    config = small_config()
    wd = str(tmp_path_factory.mktemp("quant_rows"))
    train_ds, test_ds = data.load("mnist1d", "train"), data.load("mnist1d", "test")
    model = common.build_model(config, num_classes=10)
    ctx = _quantizing.Setup(config, wd, False, model, train_ds, test_ds)
    params, stats = train.init_model(model, jax.random.PRNGKey(0), train_ds.x[:1])
    step_fn = train.make_train_step(label_smoothing=0.1)
    fit = dict(workdir=wd, progress=False, key=jax.random.PRNGKey(1))
    dense = train.TrainState.create(
        apply_fn=model.apply, params=params, tx=common.build_optimizer(config, steps=200)
    )
    dense, _ = common.fit(config, dense, step_fn, train_ds, phase="dense", steps=200, **fit)
    tx = prune.wrap(
        common.build_optimizer(config, steps=60, learning_rate=3e-3),
        sparsity=0.9,
        scope="global",
        exclude_first=True,
    )
    copy = jax.tree.map(jnp.copy, dense.params)
    pruned = train.TrainState.create(apply_fn=model.apply, params=copy, tx=tx)
    pruned, _ = common.fit(config, pruned, step_fn, train_ds, phase="prune", steps=60, **fit)
    masks = prune.find_masks(pruned.opt_state)
    pruned = pruned.replace(params=prune.finalize(pruned.params, masks))
    rows = _quantizing.quant_rows(ctx, dense=dense, pruned=pruned, masks=masks)
    dense_acc = common.evaluate(config, dense, test_ds)["test_accuracy"]
    return ctx, dense, pruned, masks, {r["name"]: r for r in rows}, dense_acc


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
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["step_ms"] > 0
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
    weights = _quantizing.layer_bits(dense.params, 4, end_bits=8)
    acts = _quantizing.layer_bits(dense.params, 8)
    before = jax.tree.map(np.copy, dense.params)
    params, stats = _quantizing.qat(ctx, dense.params, {}, weights=weights, acts=acts, phase="qat")
    assert stats == {}
    jax.tree.map(np.testing.assert_array_equal, dense.params, before)  # left untouched
    restored = quant.quantize_params(params, _quantizing.weight_rules(weights))
    shipped = quant.load_quantized(os.path.join(ctx.workdir, "quant", "qat_int4.jfq"))
    a, b = tree_lib.flatten(shipped["params"]), tree_lib.flatten(restored)  # QArray fields
    assert a.keys() == b.keys() and "conv2/kernel/values" in a
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)


def test_layer_bits_and_rules():
    params = models.get("cnn", num_classes=10, channels=(4, 4, 4))
    params = jax.eval_shape(params.init, jax.random.PRNGKey(0), jnp.zeros((1, 40)))["params"]
    bits = _quantizing.layer_bits(params, 4, end_bits=8)
    assert bits == {"conv1": 8, "conv2": 4, "conv3": 4, "head": 8}
    assert _quantizing.layer_bits(params, 3) == dict.fromkeys(bits, 3)
    specs = quant.weight_specs(params, _quantizing.weight_rules(bits))
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
    logistic = {"head": {"kernel": jnp.zeros((40, 10)), "bias": jnp.zeros(10)}}
    assert _quantizing.layer_bits(logistic, 4, end_bits=8) == {"head": 8}


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
        _quantizing.validate_quant(config)


def test_defaults_apply_without_a_quant_section():
    config = common.base_config()
    assert _quantizing.validate_quant(config) == _quantizing.DEFAULTS
    with pytest.raises(ValueError, match="bitz"):
        _quantizing.quant_config(bitz=3)


def test_sweep_settings_reject_bad_widths_and_methods():
    config = load_config(SWEEP)
    assert bits_sweep.settings(config)["widths"] == (2, 3, 4, 6, 8)
    for widths, fragment in (((2, 17), r"sweep\.bits\[1\]=17"), ((4, 4), "duplicates")):
        config.sweep.bits = widths
        with pytest.raises(ValueError, match=fragment):
            bits_sweep.settings(config)
    config.sweep.bits = (4,)
    config.sweep.methods = ("ptq", "gptq")
    with pytest.raises(ValueError, match="gptq"):
        bits_sweep.settings(config)


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
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["compression"] == dense_bytes / row["size_bytes"]
    # conv1 and head stay at 8 bits; conv2 and conv3 pack two 2-bit values per byte.
    for method in bits_sweep.METHODS:
        assert rows[f"{method}@8"]["size_bytes"] - rows[f"{method}@2"]["size_bytes"] == 768
    assert abs(rows["ptq_weights@8"]["test_accuracy"] - report["dense_test_accuracy"]) <= 0.01
    for b in (2, 8):
        assert (wd / "checkpoints" / f"qat@{b}").is_dir()
    assert report["plots"] == ["bits_accuracy.png"]
    assert (wd / "bits_accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--config.quant.observer=mean", "quant.observer='mean'"),
        ("--config.sweep.bits=(2, 17)", "sweep.bits[1]=17"),
    ],
)
def test_bad_quant_config_is_one_line_exit_2(tmp_path, override, fragment):
    r = cli(f"--config={SWEEP}", f"--workdir={tmp_path / 'w'}", override)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxopt-ft: error:"), r.stderr[-2000:]
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "w").exists()  # validated before any work
