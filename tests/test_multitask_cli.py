"""End-to-end tests of the ``multitask`` experiment through the command line."""

import json
import os

import numpy as np
import pytest
from helpers import cli, load_config

from jaxopt_ft import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mnist1d_multitask.py")
ROWS = ["single_task", "equal", "uncertainty", "dwa", "gradnorm", "pcgrad", "alternating"]
SHORT = [
    "--config.train.steps=8",
    "--config.train.log_every=4",
    "--config.checkpoint.every_steps=0",
    "--config.model.channels=(8,)",
    "--config.multitask.dwa_window=2",
    "--config.multitask.similarity_every=2",
    "--config.multitask.rows=" + repr(tuple(ROWS)),
    "--config.eval.batch_size=500",
    "--noprogress",
]


def test_cli_all_rows_matrix_plot_and_resume(tmp_path):
    workdir = str(tmp_path / "run")
    args = [f"--config={CONFIG}:digit,slope", f"--workdir={workdir}", *SHORT]
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    assert [r["name"] for r in report["rows"]] == ROWS
    assert report["tasks"] == ["digit", "slope"]
    for row in report["rows"]:
        # 8 steps: below the mean predictor's MSE (1.0) on slope, above chance on digit
        assert row["digit_accuracy"] > 0.1 and 0.0 < row["slope_mse"] < 1.0, row
        assert row["params"] > 0 and row["wall_s"] > 0
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["single_task"]["params"] > rows["equal"]["params"]  # two trunks vs one
    np.testing.assert_allclose(
        sum(rows["gradnorm"][f"weight_{t}"] for t in "digit slope".split()), 2, rtol=1e-5
    )
    matrix = np.array(report["task_similarity"])
    assert matrix.shape == (2, 2) and report["similarity_steps"] == 4
    np.testing.assert_array_equal(matrix, matrix.T)
    np.testing.assert_array_equal(np.diag(matrix), [1.0, 1.0])
    assert report["plots"] == ["task_similarity.png"]
    assert os.path.getsize(os.path.join(workdir, "task_similarity.png")) > 1000

    # Every row is a finished phase now: a rerun restores it instead of training again.
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    with open(os.path.join(workdir, "report.json")) as f:
        rerun = json.load(f)
    for old, new in zip(report["rows"], rerun["rows"], strict=True):
        for key in old:
            if key not in ("wall_s", "train_steps_per_s", "step_ms"):
                assert new[key] == old[key], key
    assert rerun["task_similarity"] == report["task_similarity"]


def test_cli_task_without_labels_exits_2(tmp_path):
    result = cli(f"--config={CONFIG}", f"--workdir={tmp_path}", "--config.dataset.name=digits")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("jaxopt-ft: error: Task 'slope' has no labels on dataset 'digits'")


def _config(**multitask):
    config = load_config(CONFIG)
    config.train.steps = 20
    for key, value in multitask.items():
        config.multitask[key] = value
    return config


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {
                "static_weights": {
                    "digit": 1.0,
                    "parity": 1.0,
                    "large": 1.0,
                    "slope": 1.0,
                    "size": 2.0,
                }
            },
            r"unknown task\(s\): \['size'\]",
        ),
        ({"static_weights": {"digit": 1.0}}, r"missing: \['parity', 'large', 'slope'\]"),
        ({"rows": ("equal", "mgda_plus")}, "multitask.rows"),
        ({"mgda_normalize": "l1"}, "mgda_normalize"),
        ({"cagrad_rescale": 3}, "cagrad_rescale"),
        ({"cagrad_alpha": -0.5}, "cagrad_alpha"),
        ({"gradvac_beta": 0.0}, "gradvac_beta"),
        ({"graddrop_leak": 1.5}, "graddrop_leak"),
        ({"db_beta": 1.0}, "db_beta"),
        ({"nash_max_norm": -1.0}, "nash_max_norm"),
        ({"similarity_from": "single_task"}, "similarity_from"),
        ({"gradnorm_alpha": -1.0}, "alpha"),
        ({"alternate": "random"}, "alternate"),
        (
            {
                "tasks": {
                    "digit": {"kind": "classification", "num_classes": 3, "loss": "cross_entropy"}
                },
                "static_weights": {"digit": 1.0},
            },
            "num_classes=10",
        ),
    ],
)
def test_validate_rejects_bad_multitask_config(change, match):
    with pytest.raises(ValueError, match=match):
        experiments.prepare(_config(**change))
