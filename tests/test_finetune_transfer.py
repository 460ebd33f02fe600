"""The ``transfer`` experiment end to end through the CLI, on a shrunken config."""

import json
import os

import pytest
from helpers import cli, load_config

from jaxopt_ft import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mnist1d_transfer.py")
SMALL = [
    "--config.model.channels=(8, 8, 8)",
    "--config.train.steps=30",
    "--config.transfer.steps=5",
    "--config.transfer.seeds=(0,)",
    "--config.transfer.per_class=4",
    "--config.transfer.batch_size=10",
    "--config.transfer.lora_rank=2",
    "--noprogress",
]
MODES = ["full", "partial", "linear_probe", "features", "lora", "scratch"]


def _error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxopt-ft: error:"), result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("transfer")
    result = cli(f"--config={CONFIG}", f"--workdir={wd}", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    return wd


def test_transfer_reports_all_six_modes(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert report["experiment"] == "transfer" and report["model"] == "cnn"
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == MODES
    for row in rows.values():
        assert row["test_accuracy"] >= 0.2  # five classes: chance is 0.2
        assert row["step_ms"] > 0 and row["wall_s"] > 0
    total = rows["full"]["trainable_params"]
    head = 40 * 5 + 5  # 5 positions x 8 channels into 5 classes
    conv1 = 5 * 8 + 8
    assert rows["full"]["frozen_params"] == 0 and rows["scratch"]["trainable_params"] == total
    assert (rows["partial"]["trainable_params"], rows["partial"]["frozen_params"]) == (
        total - conv1,
        conv1,
    )
    for mode in ("linear_probe", "features"):
        assert rows[mode]["trainable_params"] == head
        assert rows[mode]["frozen_params"] == total - head
        assert rows[mode]["opt_state_bytes"] <= 3 * head * 4
    adapters = (5 * 2 + 2 * 8) + 2 * (24 * 2 + 2 * 8)  # A (fan_in, 2) + B (2, 8) per conv
    assert rows["lora"]["trainable_params"] == head + adapters
    assert rows["full"]["opt_state_bytes"] > rows["lora"]["opt_state_bytes"]
    assert report["test_examples"] > 400 and report["per_class"] == 4
    assert report["pretrain"]["train_examples"] > 1500
    assert (run_dir / "transfer.png").exists() and (run_dir / "report.md").exists()
    assert (run_dir / "checkpoints" / "pretrain" / "30").is_dir()


def test_a_checkpoint_of_another_model_exits_2(run_dir, tmp_path):
    line = _error(
        cli(
            f"--config={CONFIG}",
            f"--workdir={tmp_path / 'w'}",
            *[a for a in SMALL if not a.startswith("--config.model.channels")],
            "--config.model.channels=(8, 8)",
            f"--config.transfer.pretrained={run_dir / 'checkpoints' / 'pretrain'}",
        )
    )
    assert "params/conv3/kernel" in line and "another model" in line, line


def test_a_rule_matching_nothing_exits_2(tmp_path):
    rules = "(('conv9/.*', 'frozen'), ('.*', 'trunk'))"
    line = _error(
        cli(
            f"--config={CONFIG}",
            f"--workdir={tmp_path}",
            *SMALL,
            f"--config.transfer.partial_rules={rules}",
        )
    )
    assert "rules matching no parameter: ['conv9/.*']" in line


def _config(**transfer_overrides):
    config = load_config(CONFIG)
    config.model.channels = (8, 8, 8)
    for k, v in transfer_overrides.items():
        config.transfer[k] = v
    return config


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"partial_rules": (("conv1/.*", "mid"), ("head/.*", "head"), (".*", "trunk"))},
            r"no transformation: 'mid': \['conv1/bias', 'conv1/kernel'\]",
        ),
        ({"dont_load": ("classifier/.*",)}, r"dont_load rules matching no parameter"),
        ({"lora_targets": ("conv1/bias",)}, r"'conv1/bias' has shape \(8,\)"),
        ({"modes": ("full", "half")}, r"transfer.modes\[1\]='half' is not accepted"),
        ({"per_class": 5000}, r"transfer.per_class=5000 exceeds"),
        ({"batch_size": 500}, r"transfer.batch_size=500 exceeds the 100 few-shot examples"),
        ({"target_classes": (5, 5)}, r"transfer.target_classes=\[5, 5\] has duplicates"),
    ],
)
def test_validate_names_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        experiments.prepare(_config(**overrides))
