"""Every config file loads and validates; the CIFAR-10 config runs end to end on mock data."""

import glob
import math
import os

import pytest
import tensorflow_datasets as tfds
from helpers import load_config

from jaxopt_ft import data, experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_has_docstring_with_launch_command(path):
    text = open(path).read()
    assert text.startswith('"""'), path
    assert "jaxopt-ft --config=configs/" + os.path.basename(path) in text


@pytest.mark.parametrize("path", [p for p in CONFIGS if "cifar10" not in p], ids=os.path.basename)
def test_builtin_configs_validate(path):
    settings = experiments.prepare(load_config(path))[1]
    assert settings.experiment in experiments.kinds()


def test_cifar10_lenet5_on_mock_data(tmp_path):
    config = load_config(os.path.join(ROOT, "configs", "cifar10_lenet5.py"))
    config.train.steps = 3
    config.train.batch_size = 4
    config.eval.batch_size = 8
    config.checkpoint.every_steps = 0
    config.schedule.warmup_steps = 1
    data.clear_cache()
    try:
        with tfds.testing.mock_data(num_examples=12):
            kind, settings = experiments.prepare(config)
            report = kind.run(settings, str(tmp_path), progress=False)
    finally:
        data.clear_cache()
    (row,) = report["rows"]
    assert report["dataset"] == "cifar10" and report["model"] == "lenet5"
    # Mock data has random labels: only the bookkeeping is exact.
    assert row["test_accuracy"] * 12 == pytest.approx(round(row["test_accuracy"] * 12))
    assert math.isfinite(row["test_loss"]) and row["params"] == 136886  # LeNet-5 on 32x32x3


def test_cifar10_unprepared_is_a_clear_error(tmp_path):
    config = load_config(os.path.join(ROOT, "configs", "cifar10_lenet5.py"))
    config.dataset.data_dir = str(tmp_path)
    with pytest.raises(ValueError, match="tfds build cifar10"):
        experiments.prepare(config)
