"""Typed settings: parsed once from a config, defaults in one place, one phase helper."""

import dataclasses
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, load_config

from jaxopt_ft import data, experiments, loop
from jaxopt_ft.experiments import common, fields, settings


@pytest.mark.parametrize("kind", list(settings.SETTINGS))
def test_base_config_round_trips_to_the_defaults(kind):
    config = settings.base_config(kind)
    parsed = experiments.parse(config)
    assert parsed == settings.SETTINGS[kind]()
    assert parsed.experiment == kind
    # Every described key exists in the base config, so --config.<key>=... can override it.
    for key, default, doc in fields.describe(settings.SETTINGS[kind]):
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == default or tuple(node) == tuple(default), key
        assert isinstance(doc, str)


def test_config_files_load_without_jax():
    code = (
        "import sys, glob\n"
        "sys.path.insert(0, 'tests')\n"
        "from helpers import load_config\n"
        "for path in sorted(glob.glob('configs/*.py')):\n"
        "    load_config(path)\n"
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(glob.glob(os.path.join(ROOT, "configs", "*.py"))) >= 10


def test_unknown_keys_and_bad_values_name_the_key():
    config = settings.base_config("compress")
    config.prune.sparsty = 0.5
    with pytest.raises(ValueError, match=r"no key prune\.sparsty; prune accepts: rules, "):
        experiments.parse(config)
    config = settings.base_config("train").to_dict()  # a plain dict: not type-checked
    config["train"]["steps"] = "many"
    with pytest.raises(ValueError, match=r"train\.steps must be an integer >= 1, got 'many'"):
        experiments.parse(config)
    config = settings.base_config("train")
    config.parallel.fsdp = True
    with pytest.raises(ValueError, match=r"parallel\.fsdp=True needs parallel\.mode='sharding'"):
        experiments.parse(config)
    config = settings.base_config("train")
    config.train.steps, config.optimizer.accumulate_steps = 10, 4
    with pytest.raises(ValueError, match="not a multiple of optimizer.accumulate_steps=4"):
        experiments.parse(config)
    with pytest.raises(ValueError, match="Unknown experiment 'nope'"):
        settings.base_config("nope")


def test_model_options_and_mappings_keep_their_values():
    config = load_config(os.path.join(ROOT, "configs", "mnist1d_multitask.py"), arg="slope,digit")
    s = experiments.parse(config)
    assert s.model.name == "cnn" and s.model.options == {"channels": (25, 25, 25)}
    assert list(s.multitask.tasks) == ["slope", "digit"]  # declaration order, not sorted
    assert s.multitask.static_weights == {"slope": 1.0, "digit": 1.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3


def _nan_split(nan_classes):
    real = common.load_split

    def load(s, split):
        ds = real(s, split)
        if split != "train":
            return ds
        x = np.array(ds.x)
        x[np.isin(ds.label, nan_classes)] = np.nan
        return data.Dataset(x, ds.label, ds.num_classes, ds.name)

    return load


@pytest.mark.parametrize(
    "config, overrides, nan_classes, phase",
    [
        (
            "mnist1d_transfer",
            {"train.steps": 20, "transfer.steps": 30, "transfer.modes": ("full",)},
            [5, 6, 7, 8, 9],  # the pretraining classes stay finite, the target ones do not
            "full_seed0",
        ),
        ("mnist1d_multitask", {"train.steps": 30}, list(range(10)), "single_task_digit"),
    ],
)
def test_nan_policy_stop_ends_every_kind_of_phase(
    tmp_path, monkeypatch, config, overrides, nan_classes, phase
):
    path = os.path.join(ROOT, "configs", f"{config}.py")
    config = load_config(path, overrides={"model.channels": (8, 8, 8), **overrides})
    config.train.max_consecutive_nonfinite = 3
    kind, s = experiments.prepare(config)
    assert s.train.nan_policy == "stop"
    monkeypatch.setattr(common, "load_split", _nan_split(nan_classes))
    with pytest.raises(loop.NonFiniteError, match=f"phase '{phase}': 3 consecutive non-finite"):
        kind.run(s, str(tmp_path), progress=False)
