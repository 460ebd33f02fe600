"""The ``sweep`` and ``augment`` experiments end to end, and bad recipe inputs."""

import json
import os

import pytest
from helpers import cli, load_config

from jaxopt_ft import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "configs", "mnist1d_sweep.py")
AUGMENT = os.path.join(ROOT, "configs", "digits_augment.py")
CNN = os.path.join(ROOT, "configs", "mnist1d_cnn.py")


def test_sweep_end_to_end(tmp_path):
    wd = tmp_path / "sweep"
    r = cli(
        f"--config={SWEEP}",
        f"--workdir={wd}",
        "--config.model.name=mlp",
        "--config.train.steps=40",
        "--config.train.log_every=10",
        "--config.sweep.optimizers=('sgd', 'adam')",
        "--config.sweep.schedules=('warmup_cosine',)",
        "--config.sweep.batch_sizes=(50,)",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    assert report["experiment"] == "sweep"
    names = [row["name"] for row in report["rows"]]
    assert names == ["sgd/warmup_cosine", "adam/warmup_cosine", "batch_50"]
    for row in report["rows"]:
        for key in ("optimizer", "schedule", "batch_size", "final_train_loss", "wall_s"):
            assert key in row, key
        assert row["test_accuracy"] >= 0.15, row  # chance is 0.1
    by_name = {row["name"]: row for row in report["rows"]}
    assert by_name["sgd/warmup_cosine"]["learning_rate"] == 1.0  # the per-optimizer rates
    assert by_name["adam/warmup_cosine"]["learning_rate"] == 0.01
    # Linear scaling: the rate follows the batch size at a fixed number of epochs.
    momentum_lr = 0.1 * 50 / 100
    assert by_name["batch_50"]["learning_rate"] == pytest.approx(momentum_lr)
    assert by_name["batch_50"]["steps"] == 80 and by_name["adam/warmup_cosine"]["steps"] == 40
    assert report["plots"] == ["loss_curves.png", "accuracy_bars.png"]
    for name in report["plots"]:
        assert (wd / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_augment_end_to_end(tmp_path):
    wd = tmp_path / "aug"
    r = cli(
        f"--config={AUGMENT}",
        f"--workdir={wd}",
        "--config.train.steps=12",
        "--config.train.log_every=6",
        "--config.augment.seeds=(0, 1)",
        "--config.train.batch_size=16",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((wd / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["no_augment", "augment"]
    for row in rows.values():
        seeds = [row["test_accuracy_seed0"], row["test_accuracy_seed1"]]
        assert row["test_accuracy"] == pytest.approx(sum(seeds) / 2)
        assert row["test_accuracy_std"] == pytest.approx(abs(seeds[0] - seeds[1]) / 2**0.5)
    diff = report["paired_difference"]
    assert diff["seeds"] == 2
    assert diff["mean"] == pytest.approx(
        rows["augment"]["test_accuracy"] - rows["no_augment"]["test_accuracy"]
    )
    # Each (arm, seed) is its own resumable phase.
    phases = {json.loads(line)["phase"] for line in open(wd / "metrics.jsonl")}
    assert phases == {"no_augment_seed0", "augment_seed0", "no_augment_seed1", "augment_seed1"}


@pytest.mark.parametrize(
    "config, key, value, fragments",
    [
        (AUGMENT, "augment.ops", "blur(p=0.5)", ["'blur'", "accepted: crop, flip"]),
        (AUGMENT, "augment.ops", "crop(pad=1, p=1.5)", ["augment.ops", "1.5", "[0, 1]"]),
        (CNN, "augment.ops", "crop(pad=1)", ["'crop' needs images", "shift"]),
        (CNN, "optimizer.accumulate_steps", 0, ["accumulate_steps", ">= 1", "got 0"]),
        (CNN, "train.nan_policy", "ignore", ["nan_policy='ignore'", "skip, stop"]),
        (SWEEP, "sweep.optimizers", ("sgd", "lion"), ["lion", "adamw"]),
    ],
)
def test_bad_recipe_inputs_name_the_key(config, key, value, fragments):
    # At the CLI every such error is one line and exit 2 (tests/test_bad_inputs.py).
    with pytest.raises(ValueError) as info:
        experiments.prepare(load_config(config, overrides={key: value}))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_diverging_run_stops_with_one_line_and_keeps_checkpoints(tmp_path):
    import re

    import jax
    import numpy as np

    from jaxopt_ft import checkpoint

    wd = tmp_path / "div"
    args = [
        f"--config={CNN}",
        f"--workdir={wd}",
        "--config.optimizer.name=sgd",
        "--config.optimizer.learning_rate=100.0",  # diverges within a few steps
        "--config.train.steps=200",
        "--config.checkpoint.every_steps=2",
        "--config.train.max_consecutive_nonfinite=3",
    ]
    r = cli(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr[-2000:]
    m = re.search(
        r"stopped at step (\d+) .*: 3 consecutive non-finite updates \(steps (\d+)-", lines[0]
    )
    assert m, lines[0]
    stop, first = int(m.group(1)), int(m.group(2))
    assert stop == first + 2
    ck = checkpoint.Checkpointer(wd / "checkpoints" / "train")
    kept = ck.latest_step()
    assert kept is not None and kept < stop and f"last checkpoint (step {kept})" in lines[0]
    assert not (wd / "report.json").exists()
    restored = ck._manager.restore(kept)
    for leaf in jax.tree.leaves(restored["params"]):
        assert np.all(np.isfinite(np.asarray(leaf)))  # skipped updates never reached the params


def test_every_sweep_run_starts_from_the_same_initial_params(tmp_path):
    """A run's result does not depend on the runs before it in the sweep."""
    rows = {}
    for name, optimizers in (("both", ("sgd", "adam")), ("alone", ("adam",))):
        config = load_config(SWEEP, overrides={
            "model.name": "mlp", "train.steps": 20, "train.log_every": 10,
            "sweep.optimizers": optimizers, "sweep.schedules": ("constant",),
            "sweep.batch_sizes": (100,),
        })  # fmt: skip
        kind, s = experiments.prepare(config)
        report = kind.run(s, str(tmp_path / name), progress=False)
        rows[name] = {r["name"]: r for r in report["rows"]}
    assert rows["both"]["adam/constant"]["test_loss"] == rows["alone"]["adam/constant"]["test_loss"]
    assert rows["both"]["batch_100"]["test_loss"] == rows["alone"]["batch_100"]["test_loss"]
