"""`--quick`: every phase of every config cut to a smoke run that still validates."""

import glob
import os

import pytest
from helpers import load_config

from jaxopt_ft import experiments
from jaxopt_ft.experiments import quick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if "cifar" not in p)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_shortened_validates_with_short_phases(path):
    config = load_config(path)
    quick.shorten(config)
    settings = experiments.prepare(config)[1]
    lengths = [v for k, v in _leaves(config) if quick._is_length(k.split(".")[-1])]
    assert settings.train.steps <= 20 and settings.eval.timing_repeats <= 2
    assert all(v <= 20 for v in lengths), lengths


def _leaves(node, prefix=""):
    for k in node.keys():
        v = node[k]
        if hasattr(v, "keys"):
            yield from _leaves(v, f"{prefix}{k}.")
        elif isinstance(v, int) and not isinstance(v, bool):
            yield f"{prefix}{k}", v


def test_shorten_changes_exactly_the_phase_lengths_and_cadences():
    config = load_config(os.path.join(ROOT, "configs", "mnist1d_compress.py"))
    changed = quick.shorten(config)
    assert sorted(changed) == [
        "eval.timing_repeats: 20 -> 2",
        "prune.frequency: 50 -> 5",
        "prune.steps: 1500 -> 20",
        "prune.structured_steps: 500 -> 20",
        "quant.qat_steps: 100 -> 20",
        "train.log_every: 500 -> 20",
        "train.steps: 2000 -> 20",
    ]
    config = load_config(
        os.path.join(ROOT, "configs", "mnist1d_cnn.py"),
        overrides={"optimizer.accumulate_steps": 8, "train.steps": 800},
    )
    quick.shorten(config)
    assert config.train.steps == 16  # a multiple of accumulate_steps
