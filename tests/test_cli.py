"""End-to-end tests through the command line, on shrunken configs."""

import json
import os

from helpers import cli, one_error_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "configs", "mnist1d_cnn.py")


SHORT = [
    "--config.train.steps=60",
    "--config.checkpoint.every_steps=20",
    "--config.train.log_every=20",
    "--noprogress",
]


def test_train_writes_everything(tmp_path):
    wd = tmp_path / "run"
    r = cli(f"--config={CNN}", f"--workdir={wd}", *SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "report.json", "report.md"):
        assert (wd / name).exists(), name
    report = json.loads((wd / "report.json").read_text())
    assert report["experiment"] == "train" and report["model"] == "cnn"
    (row,) = report["rows"]
    assert row["name"] == "dense" and row["params"] == 5210
    assert row["test_accuracy"] >= 0.3  # 60 steps: well past chance (0.1)
    steps = [json.loads(line)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 60]
    # Re-running the finished run resumes at the end and reports the same metrics.
    r2 = cli(f"--config={CNN}", f"--workdir={wd}", *SHORT)
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = json.loads((wd / "report.json").read_text())["rows"][0]
    assert again["test_loss"] == row["test_loss"]
    # ... and what its log says about the training it no longer needs to do.
    assert again["final_train_loss"] == row["final_train_loss"] is not None
    assert again["train_steps_per_s"] > 0  # the rate logged at the last step
    assert again["test_accuracy"] == row["test_accuracy"]


# Bad values, unknown names and keys, a missing config file: tests/test_bad_inputs.py.


def test_workdir_of_another_config_is_refused(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    old = {"note": "another run"}
    (wd / "config.json").write_text(json.dumps(old))
    (wd / "report.json").write_text("{}")
    line = one_error_line(cli(f"--config={CNN}", f"--workdir={wd}", *SHORT))
    assert "different config" in line and "allow_config_change" in line
    assert json.loads((wd / "config.json").read_text()) == old
    assert (wd / "report.json").read_text() == "{}"


def test_workdir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    line = one_error_line(cli(f"--config={CNN}", f"--workdir={f}", *SHORT))
    assert "not a directory" in line
    assert f.read_text() == "x"


# SIGKILL-and-resume is covered in tests/test_faults.py (five seeded kill points).
