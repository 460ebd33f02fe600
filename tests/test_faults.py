"""Crash safety: SIGKILL at seeded random points, corrupt checkpoints, config mismatch."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxopt_ft import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "configs", "mnist1d_cnn.py")
ARGS = [
    f"--config={CNN}",
    "--config.train.steps=500",
    "--config.checkpoint.every_steps=40",
    "--config.train.log_every=20",
    "--noprogress",
]
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


def _cli(workdir, *extra):
    return subprocess.run(
        [sys.executable, "-m", "jaxopt_ft.cli", *ARGS, f"--workdir={workdir}", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=300,
    )


def _logged_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def _params(workdir, step):
    raw = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", "train"))
    restored = raw._manager.restore(step)
    return restored["params"]


def _flat(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = tmp_path_factory.mktemp("faults") / "reference"
    r = _cli(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd


def test_sigkill_at_seeded_random_points(reference, tmp_path):
    rng = random.Random(1234)
    # Kill points: after k logged records (k random, increasing) plus a random delay, so some
    # kills land mid-step, some mid-checkpoint-write.
    points = sorted(rng.sample(range(2, 24), 5))
    wd = tmp_path / "killed"
    kills = 0
    for k in points:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxopt_ft.cli", *ARGS, f"--workdir={wd}"],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and _logged_steps(wd) < k:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 5, f"only {kills} of the runs were still alive to be killed"
    r = _cli(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    for a, b in zip(_flat(_params(reference, 500)), _flat(_params(wd, 500)), strict=True):
        np.testing.assert_array_equal(a, b)
    ref = json.loads((reference / "report.json").read_text())["rows"][0]
    row = json.loads((wd / "report.json").read_text())["rows"][0]
    for key in ("test_loss", "test_accuracy", "params", "size_bytes", "final_train_loss"):
        assert row[key] == ref[key], key
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(20, 501, 20))  # none duplicated or missing
    ref_recs = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs]


def test_corrupt_latest_checkpoint_resumes_from_previous(reference, tmp_path):
    wd = tmp_path / "corrupt"
    shutil.copytree(reference, wd)
    ckdir = wd / "checkpoints" / "train"
    steps = sorted(int(d) for d in os.listdir(ckdir) if d.isdigit())
    assert steps[-1] == 500 and len(steps) >= 2
    # Corrupt the final checkpoint's array data and drop the report: the rerun must fall back
    # to the previous checkpoint (with a warning), retrain the rest and end identically.
    for root, _, files in os.walk(ckdir / "500"):
        for f in files:
            if not f.startswith("_CHECKPOINT_METADATA"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
    (wd / "report.json").unlink()
    r = _cli(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cannot be restored" in r.stderr
    for a, b in zip(_flat(_params(reference, 500)), _flat(_params(wd, 500)), strict=True):
        np.testing.assert_array_equal(a, b)
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(20, 501, 20))


def test_different_config_refused_then_allowed(reference, tmp_path):
    wd = tmp_path / "other"
    shutil.copytree(reference, wd)
    before = {p: (wd / p).read_bytes() for p in ("config.json", "report.json", "metrics.jsonl")}
    r = _cli(wd, "--config.optimizer.learning_rate=0.005")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "optimizer.learning_rate: 0.01 -> 0.005" in lines[0]
    assert {p: (wd / p).read_bytes() for p in before} == before
    r = _cli(wd, "--config.optimizer.learning_rate=0.005", "--allow_config_change")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((wd / "config.json").read_text())["optimizer"]["learning_rate"] == 0.005


def _wait_for_records(proc, wd, k, timeout=240):
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and _logged_steps(wd) < k:
        time.sleep(0.01)


def test_signals_save_and_resume_bit_identically_and_a_second_run_is_refused(reference, tmp_path):
    """SIGTERM, then SIGINT, at seeded points of a phase that saves only at its end."""
    rng = random.Random(77)
    wd = tmp_path / "signalled"
    extra = ["--config.checkpoint.every_steps=0"]
    stops = []
    for sig, k in ((signal.SIGTERM, rng.randint(2, 8)), (signal.SIGINT, rng.randint(12, 18))):
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxopt_ft.cli", *ARGS, f"--workdir={wd}", *extra],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_records(proc, wd, k)
        if sig == signal.SIGTERM:  # while it holds the workdir, a second run is refused
            proc.send_signal(signal.SIGSTOP)
            busy = _cli(wd, *extra)
            proc.send_signal(signal.SIGCONT)
            assert busy.returncode == 2 and "in use" in busy.stderr, busy.stderr[-2000:]
        time.sleep(rng.uniform(0.0, 0.1))
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 128 + sig, err[-2000:]
        assert len(lines) == 1 and signal.Signals(sig).name in lines[0], err[-2000:]
        step = int(lines[0].split("checkpoint at step ")[1].split()[0])
        assert str(step) in os.listdir(wd / "checkpoints" / "train")
        stops.append(step)
    assert 0 < stops[0] < stops[1] < 500
    assert not (wd / "lock").exists()
    r = _cli(wd, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    for a, b in zip(_flat(_params(reference, 500)), _flat(_params(wd, 500)), strict=True):
        np.testing.assert_array_equal(a, b)
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(20, 501, 20))  # none duplicated or missing
    ref = json.loads((reference / "report.json").read_text())["rows"][0]
    row = json.loads((wd / "report.json").read_text())["rows"][0]
    assert row["test_loss"] == ref["test_loss"]


def test_failed_config_change_leaves_config_json_byte_identical(reference, tmp_path):
    wd = tmp_path / "changed"
    shutil.copytree(reference, wd)
    before = {p: (wd / p).read_bytes() for p in ("config.json", "report.json", "metrics.jsonl")}
    # Another model's shapes: the restore fails once the run has started; orbax's abandoned
    # reads print nothing.
    r = _cli(wd, "--config.model.width_mult=2.0", "--allow_config_change")
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(err) <= 3 and "restored" in err[-1], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert {p: (wd / p).read_bytes() for p in before} == before
    assert not (wd / "lock").exists()


def test_evaluate_and_summary_of_a_finished_run(reference, capsys):
    from jaxopt_ft import cli

    assert cli.invoke(["evaluate", f"--workdir={reference}"]) == 0
    got = json.loads(capsys.readouterr().out)
    row = json.loads((reference / "report.json").read_text())["rows"][0]
    assert (got["phase"], got["step"], got["split"]) == ("train", 500, "test")
    assert got["test_loss"] == row["test_loss"] and got["test_accuracy"] == row["test_accuracy"]
    assert cli.invoke(["evaluate", f"--workdir={reference}", "--phase=prune"]) == 2
    assert "pick one of: train" in capsys.readouterr().err
    assert cli.invoke(["summary", f"--workdir={reference}"]) == 0
    out = capsys.readouterr().out
    assert "phase train: checkpoint at step 500; last logged step 500" in out and "| dense |" in out
