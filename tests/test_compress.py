"""End-to-end tests of the ``compress`` and ``sparsity_sweep`` experiments through the CLI."""

import json
import os

import helpers
import pytest
from helpers import cli, one_error_line

from jaxopt_ft import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPRESS = os.path.join(ROOT, "configs", "mnist1d_compress.py")
SWEEP = os.path.join(ROOT, "configs", "mnist1d_sparsity_sweep.py")

# A few hundred steps in all, on a narrower CNN.
SMALL = [
    "--config.model.channels=(16, 16, 16)",
    "--config.train.steps=150",
    "--config.train.log_every=50",
    "--config.prune.steps=120",
    "--config.prune.frequency=10",
    "--config.prune.structured_steps=30",
    # A quarter of conv1's channels and half of conv2's and conv3's; the head stays.
    "--config.prune.structured_rules=(('conv1', 0.25), ('conv[23]', 0.5))",
    "--config.eval.timing_repeats=2",
    "--config.quant.qat_steps=20",
    "--config.quant.calibration_batches=2",
    "--noprogress",
]


def test_compress_end_to_end(tmp_path):
    wd = tmp_path / "run"
    r = cli(f"--config={COMPRESS}", f"--workdir={wd}", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert report["experiment"] == "compress"
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == [
        "dense",
        "pruned",
        "structured",
        "int8_ptq",
        "int8_weights",
        "qat_int4",
        "pruned_quantized",
    ]
    for row in rows.values():
        for key in ("test_accuracy", "params", "nonzero_params", "sparsity", "size_bytes"):
            assert key in row, (row["name"], key)
        assert row["test_accuracy"] >= 0.2 and row["step_ms"] > 0  # chance is 0.1
        assert 0 < row["nonzero_params"] <= row["params"]
    dense, pruned, structured = rows["dense"], rows["pruned"], rows["structured"]
    # 16 channels: conv1 80+16, conv2 768+16, conv3 768+16, head 80*10+10.
    assert dense["params"] == pruned["params"] == 2474
    assert dense["size_bytes"] == 4 * 2474 and dense["sparsity"] == 0.0
    # conv1/kernel is excluded (exclude_first): conv2, conv3 and head kernels are prunable.
    n_prunable = report["prunable_params"]
    assert n_prunable == 768 + 768 + 800
    # Global scope removes round(0.9 * 2336) = 2102 weights (half to even, as torch does).
    assert pruned["sparsity"] == pytest.approx(2102 / n_prunable)
    removed = round(pruned["sparsity"] * n_prunable)
    assert pruned["nonzero_params"] <= pruned["params"] - removed
    assert pruned["nonzero_params"] >= pruned["params"] - n_prunable
    assert (wd / "pruned.npz").stat().st_size == pruned["size_bytes"] < dense["size_bytes"]
    assert report["structured_kept_units"] == {"conv1": 12, "conv2": 8, "conv3": 8}
    assert structured["params"] == (60 + 12) + (288 + 8) + (192 + 8) + (400 + 10)
    assert structured["size_bytes"] == 4 * structured["params"]
    assert structured["sparsity"] == pytest.approx(1 - (288 + 192 + 400) / n_prunable)
    assert structured["params"] < dense["params"]
    layers = {r["name"]: r for r in report["layer_sparsity"]}
    assert layers["conv1/kernel"]["sparsity"] == 0.0 and not layers["conv1/kernel"]["prunable"]
    assert layers["total (prunable)"]["nonzero"] == round((1 - pruned["sparsity"]) * n_prunable)
    assert report["plots"] == ["layer_sparsity.png"]
    assert (wd / "layer_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    for phase in ("dense", "prune", "structured"):
        assert (wd / "checkpoints" / phase).is_dir(), phase
    # A finished run restores every phase and reports the same accuracies.
    r2 = cli(f"--config={COMPRESS}", f"--workdir={wd}", *SMALL)
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = {row["name"]: row for row in json.loads((wd / "report.json").read_text())["rows"]}
    for name, row in rows.items():
        for key in ("test_accuracy", "nonzero_params", "sparsity", "size_bytes"):
            assert again[name][key] == row[key], (name, key)


def test_sparsity_sweep_end_to_end(tmp_path):
    wd = tmp_path / "sweep"
    r = cli(
        f"--config={SWEEP}",
        f"--workdir={wd}",
        "--config.model.channels=(8, 8, 8)",
        "--config.train.steps=60",
        "--config.prune.steps=20",
        "--config.prune.frequency=5",
        "--config.sweep.sparsities=(0.5, 0.9)",
        "--noprogress",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    methods = ("magnitude-layer", "magnitude-global", "random", "saliency")
    names = [f"{m}@{s}" for m in methods for s in ("0.5", "0.9")]
    assert [row["name"] for row in report["rows"]] == names
    for row in report["rows"]:
        assert row["method"] in methods
        # round(target * n) weights per layer (half to even, as torch.nn.utils.prune)
        assert abs(row["sparsity"] - row["target_sparsity"]) < 1e-3
        if row["method"].startswith("magnitude") and row["target_sparsity"] == 0.5:
            assert row["test_accuracy"] >= 0.12, row  # half the weights left: above chance
    assert report["dense_test_accuracy"] >= 0.15  # 60 steps of an 8-channel CNN; chance 0.1
    assert report["plots"] == ["sparsity_accuracy.png"]
    assert (wd / "sparsity_accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--config.prune.rules=(('dense9/kernel', True),)", "matching no parameter: ['dense9"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, override, fragment):
    r = cli(f"--config={COMPRESS}", f"--workdir={tmp_path / 'w'}", override)
    line = one_error_line(r)
    assert fragment in line, line
    assert not (tmp_path / "w").exists()  # validated before any work


def load_config(path, **overrides):
    return helpers.load_config(
        path, overrides={k.replace("__", "."): v for k, v in overrides.items()}
    )


@pytest.mark.parametrize(
    "kind, overrides, fragment",
    [
        ("compress", {"prune__sparsity": -0.1}, "prune.sparsity=-0.1"),
        ("compress", {"prune__sparsity": 1.0}, "prune.sparsity=1.0 must be a number in [0, 1)"),
        ("compress", {"prune__scope": "channel"}, "prune.scope='channel' is not accepted"),
        ("compress", {"prune__scorer": "taylor"}, "prune.scorer='taylor'"),
        ("compress", {"prune__distribution": "erk"}, "scope='global'"),
        ("compress", {"prune__begin_fraction": 0.8}, "prune.begin_fraction=0.8"),
        ("compress", {"prune__rules": (("conv.*/kernel", "yes"),)}, "must be True or False"),
        ("compress", {"prune__rules": ((".*/kernel", False),)}, "No prunable parameters"),
        ("compress", {"prune__structured_sparsity": 1.5}, "prune.structured_sparsity=1.5"),
        ("compress", {"prune__structured_rules": (("conv9", 0.5),)}, "conv9"),
        ("compress", {"prune__export_format": "csr"}, "prune.export_format='csr'"),
        ("sparsity_sweep", {"sweep__methods": ("magnitude-layer", "snip")}, "sweep.methods"),
        ("sparsity_sweep", {"sweep__sparsities": (0.5, 1.0)}, "sweep.sparsities[1]=1.0"),
        ("sparsity_sweep", {"sweep__sparsities": (0.5, 0.5)}, "duplicates"),
    ],
)
def test_validate_names_the_bad_key(kind, overrides, fragment):
    config = load_config(COMPRESS if kind == "compress" else SWEEP, **overrides)
    with pytest.raises(ValueError) as e:
        experiments.prepare(config)
    assert fragment in str(e.value)
