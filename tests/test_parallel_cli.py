"""The command line and the experiments under every parallel mode, on 8 simulated devices."""

import json

import pytest
from helpers import cli, config_path, load_config, one_error_line

from jaxopt_ft import experiments

SHORT = [
    "--config.train.steps=60",
    "--config.checkpoint.every_steps=30",
    "--config.train.log_every=30",
    "--noprogress",
]


def test_cnn_config_gives_the_same_test_loss_under_every_mode(tmp_path):
    rows = {}
    for mode in ("none", "sharding", "pmap"):
        wd = tmp_path / mode
        r = cli(
            f"--config={config_path('mnist1d_cnn')}",
            f"--workdir={wd}",
            f"--config.parallel.mode={mode}",
            *SHORT,
            devices=8,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        rows[mode] = json.loads((wd / "report.json").read_text())["rows"][0]
    ref = rows["none"]
    assert ref["test_accuracy"] > 0.3  # 60 steps train the CNN well past chance (0.1)
    for mode in ("sharding", "pmap"):
        assert rows[mode]["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-4), mode
        assert rows[mode]["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-4)


def test_batch_that_does_not_divide_is_one_error_line(tmp_path):
    wd = tmp_path / "run"
    r = cli(
        f"--config={config_path('mnist1d_cnn')}",
        f"--workdir={wd}",
        "--config.parallel.mode=pmap",
        "--config.train.batch_size=100",
        devices=8,
    )
    line = one_error_line(r)
    assert "train.batch_size=100" in line and "8 devices" in line and "96" in line
    assert not wd.exists()  # nothing written


def _config(name, overrides):
    return load_config(config_path(name), overrides=overrides)


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("mnist1d_cnn", {"parallel.mode": "tpu"}, "parallel.mode='tpu' is not accepted"),
        ("mnist1d_cnn", {"parallel.mode": "sharding", "parallel.devices": 16}, "only 8 exist"),
        (
            "mnist1d_cnn",
            {"parallel.mode": "pmap", "parallel.fsdp": True},
            "parallel.fsdp=True needs",
        ),
        ("mnist1d_cnn", {"parallel.fsdp": True}, "parallel.mode='none'"),
        ("mnist1d_cnn", {"parallel.devices": -1}, "parallel.devices must be an integer >= 0"),
        (
            "mnist1d_sweep",
            {"parallel.mode": "pmap", "train.batch_size": 96},
            "sweep.batch_sizes entry=25",
        ),
        (
            "mnist1d_transfer",
            {"parallel.mode": "pmap", "train.batch_size": 96, "transfer.batch_size": 20},
            "transfer.batch_size=20",
        ),
    ],
)
def test_bad_parallel_settings_are_rejected(name, overrides, expected):
    config = _config(name, overrides)
    with pytest.raises(ValueError, match=None) as info:
        experiments.prepare(config)
    assert expected in str(info.value), str(info.value)


SMALL = {  # compress under pmap: tests/test_parallel_fit.py and test_parallel.py
    "mnist1d_multitask": {
        "train.steps": 8,
        "model.channels": (8,),
        "multitask.dwa_window": 2,
        "multitask.similarity_every": 2,
        # equal measures the similarity in an extra pass, gradnorm from its own per-task
        # gradients; PCGrad under pmap is in tests/test_parallel_fit.py.
        "multitask.rows": ("equal", "gradnorm"),
    },
    "mnist1d_transfer": {
        "model.channels": (8, 8, 8),
        "train.steps": 30,
        "transfer.steps": 5,
        "transfer.seeds": (0,),
        "transfer.per_class": 4,
        "transfer.batch_size": 8,
        "transfer.lora_rank": 2,
        # full and scratch train like partial (a trainable mask); features has no train step.
        "transfer.modes": ("partial", "lora", "features"),
    },
}
TIMING = ("wall", "per_s", "_ms", "_s", "speedup", "latency", "time")


def numeric(row):
    return {
        k: v for k, v in row.items() if isinstance(v, float) and not any(t in k for t in TIMING)
    }


@pytest.mark.parametrize("name", list(SMALL))
def test_every_experiment_gives_the_same_rows_under_pmap(name, tmp_path):
    reports = {}
    for mode in ("none", "pmap"):
        config = _config(
            name,
            {
                **SMALL[name],
                "train.batch_size": 96,
                "checkpoint.every_steps": 0,
                "parallel.mode": mode,
            },
        )
        kind, settings = experiments.prepare(config)
        reports[mode] = kind.run(settings, str(tmp_path / mode), progress=False)
    ref, got = reports["none"]["rows"], reports["pmap"]["rows"]
    assert [r["name"] for r in got] == [r["name"] for r in ref]
    for a, b in zip(ref, got, strict=True):
        want, have = numeric(a), numeric(b)
        assert want.keys() == have.keys()
        for k, v in want.items():
            # Quantized rows round reassociated floats: allow two of 1,000 predictions to flip.
            assert have[k] == pytest.approx(v, rel=1e-3, abs=2.1e-3), (a["name"], k)
