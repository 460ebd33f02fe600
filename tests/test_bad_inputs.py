"""A catalogue of bad inputs: each is one clear line that names the value and the fix.

API entries raise ValueError/TypeError with a single-line message containing the offending
value; CLI entries exit with code 2, print exactly one line on stderr and leave existing files
untouched.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import cli, one_error_line

from jaxopt_ft import checkpoint, data, models, optim, prune, quant, train, tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = {
    "conv1": {"kernel": jnp.ones((3, 1, 4)), "bias": jnp.zeros(4)},
    "head": {"kernel": jnp.ones((8, 2)), "bias": jnp.zeros(2)},
}


def _digits():
    return data.load("digits", "train")


def _other_model_checkpoint(tmp):
    ck = checkpoint.Checkpointer(os.path.join(tmp, "ck"))
    ck.save(1, {"params": P})
    return lambda: ck.restore({"params": {"dense": {"kernel": jnp.zeros((4, 4))}}})


API = [
    # (id, callable, exception, fragment naming the value, fragment naming the fix)
    (
        "optimizer name",
        lambda: optim.make("adamm", learning_rate=0.1),
        ValueError,
        "adamm",
        "accepted",
    ),
    ("negative lr", lambda: optim.make("sgd", learning_rate=-0.1), ValueError, "-0.1", "> 0"),
    (
        "momentum >= 1",
        lambda: optim.make("momentum", learning_rate=0.1, momentum=1.0),
        ValueError,
        "1.0",
        "[0, 1)",
    ),
    (
        "schedule name",
        lambda: optim.schedule("linear", learning_rate=0.1, steps=10),
        ValueError,
        "linear",
        "accepted",
    ),
    (
        "zero steps",
        lambda: optim.schedule("cosine", learning_rate=0.1, steps=0),
        ValueError,
        "0",
        ">= 1",
    ),
    (
        "warmup too long",
        lambda: optim.schedule("warmup_cosine", learning_rate=0.1, steps=10, warmup_steps=20),
        ValueError,
        "20",
        "lower it",
    ),
    (
        "piecewise boundary",
        lambda: optim.schedule("piecewise", learning_rate=0.1, steps=10, boundaries=(1.5,)),
        ValueError,
        "1.5",
        "(0, 1)",
    ),
    (
        "rule matches nothing",
        lambda: tree.label_tree(P, [("dense/.*", 1), (".*", 0)]),
        ValueError,
        "dense/.*",
        "remove",
    ),
    (
        "uncovered param",
        lambda: tree.label_tree(P, [(".*kernel", 1)]),
        ValueError,
        "conv1/bias",
        "Add a rule",
    ),
    ("invalid regex", lambda: tree.label_tree(P, [("(", 1)]), ValueError, "(", "fix the pattern"),
    ("rules not pairs", lambda: tree.label_tree(P, "head"), TypeError, "head", "pairs"),
    ("unknown dataset", lambda: data.load("nope", "train"), ValueError, "nope", "Fix dataset.name"),
    (
        "unknown split",
        lambda: data.load("mnist1d", "validation"),
        ValueError,
        "validation",
        "Fix the split",
    ),
    (
        "subset fraction",
        lambda: data.subset(_digits(), fraction=1.5, seed=0),
        ValueError,
        "1.5",
        "pass e.g.",
    ),
    (
        "subset too many",
        lambda: data.subset(_digits(), per_class=1000, seed=0),
        ValueError,
        "1000",
        "per_class <=",
    ),
    (
        "batch size 0",
        lambda: data.train_batches(_digits(), batch_size=0, seed=0),
        ValueError,
        "batch_size=0",
        ">= 1",
    ),
    (
        "batch > dataset",
        lambda: data.train_batches(_digits(), batch_size=10**6, seed=0),
        ValueError,
        "1000000",
        "",
    ),
    ("model name", lambda: models.get("gpt"), ValueError, "gpt", "Fix"),
    ("model option", lambda: models.get("cnn", depth=3), ValueError, "depth", "Accepted"),
    (
        "model width 0",
        lambda: models.get("cnn", channels=(0, 4, 4)),
        ValueError,
        "(0, 4, 4)",
        "Fix",
    ),
    (
        "vit patch",
        lambda: models.get("vit", patch_size=3).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))
        ),
        ValueError,
        "patch_size=3",
        "Fix",
    ),
    ("sparsity 1.0", lambda: prune.compute_masks(P, sparsity=1.0), ValueError, "1.0", "[0, 1)"),
    ("sparsity < 0", lambda: prune.compute_masks(P, sparsity=-0.1), ValueError, "-0.1", "[0, 1)"),
    (
        "prune rule unused",
        lambda: prune.select_prunable(P, [("dense/kernel", True), (".*", False)]),
        ValueError,
        "dense/kernel",
        "remove",
    ),
    ("N > M", lambda: prune.compute_masks(P, nm=(4, 2)), ValueError, "N=4, M=2", "Fix"),
    (
        "update fraction 1",
        lambda: prune.cosine(0.9, fraction=1.0, frequency=100, end_step=1000),
        ValueError,
        "fraction=1.0",
        "(0, 1)",
    ),
    (
        "update fraction 0",
        lambda: prune.constant(0.9, fraction=0.0, frequency=100, end_step=1000),
        ValueError,
        "fraction=0.0",
        "(0, 1)",
    ),
    (
        "update period 0",
        lambda: prune.cosine(0.9, fraction=0.3, frequency=0, end_step=1000),
        ValueError,
        "frequency=0",
        ">= 1",
    ),
    (
        "drop/grow on an empty layer",
        lambda: prune.wrap(
            optax.sgd(0.1),
            prune.cosine(0.97, fraction=0.3, frequency=10, end_step=100),
            prune.rigl(key=jax.random.key(0), distribution="uniform"),
        ).init(P),
        ValueError,
        "'conv1/kernel': (3, 1, 4)",
        "lower the sparsity",
    ),
    (
        "DST without an update fraction",
        lambda: prune.wrap(optax.sgd(0.1), prune.one_shot(0.9), prune.set_(key=jax.random.key(0))),
        ValueError,
        "gives none",
        "prune.cosine",
    ),
    (
        "masks structure",
        lambda: prune.apply_masks(P, {"conv1": {"kernel": jnp.ones((3, 1, 4), bool)}}),
        ValueError,
        "conv1/bias",
        "dense_masks",
    ),
    (
        "prune scope",
        lambda: prune.compute_masks(P, sparsity=0.5, scope="world"),
        ValueError,
        "world",
        "accepted",
    ),
    (
        "prune scorer",
        lambda: prune.compute_masks(P, sparsity=0.5, scorer="vibes"),
        ValueError,
        "vibes",
        "accepted",
    ),
    ("bits 1", lambda: quant.fake_quant(jnp.ones(3), bits=1), ValueError, "bits=1", "2 and 16"),
    ("bits 17", lambda: quant.quantize(jnp.ones(3), bits=17), ValueError, "bits=17", "2 and 16"),
    (
        "quant axis",
        lambda: quant.fake_quant(jnp.ones((3, 4)), bits=8, axis=5),
        ValueError,
        "axis=5",
        "axis=-1",
    ),
    (
        "no calibration batches",
        lambda: quant.calibrate(models.get("cnn"), {"params": {}}, []),
        ValueError,
        "empty",
        "at least one batch",
    ),
    ("empty eval split", lambda: train.evaluate(None, {}, []), ValueError, "empty", ""),
    (
        "checkpointer keep 0",
        lambda: checkpoint.Checkpointer("/tmp/never-used-ck", max_to_keep=0),
        ValueError,
        "0",
        ">= 1",
    ),
]


@pytest.mark.parametrize("case", API, ids=[c[0] for c in API])
def test_api_bad_input(case):
    _, fn, exc, value_fragment, fix_fragment = case
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message.strip(), message
    assert value_fragment in message, message
    assert fix_fragment in message, message


def test_checkpoint_of_another_model(tmp_path):
    with pytest.raises(ValueError, match="can be restored into this model") as info:
        _other_model_checkpoint(str(tmp_path))()
    assert "\n" not in str(info.value)


def test_optax_state_mismatch_is_not_silently_accepted(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    ck.save(1, {"opt": optax.adam(1e-3).init(P)})
    with pytest.raises(ValueError, match="can be restored"):
        ck.restore({"opt": optax.sgd(1e-3, momentum=0.9).init({"w": jnp.zeros(3)})})


CNN = os.path.join(ROOT, "configs", "mnist1d_cnn.py")
CLI = [
    ("unknown optimizer", ["--config.optimizer.name=nonsense"], "nonsense"),
    ("unknown schedule", ["--config.schedule.name=fast"], "fast"),
    ("unknown model", ["--config.model.name=gpt"], "gpt"),
    ("unknown model option", ["--config.model.depth=3"], "depth"),
    ("unknown dataset", ["--config.dataset.name=no_such_dataset"], "no_such_dataset"),
    (
        "unprepared tfds dataset",
        ["--config.dataset.name=mnist", "--config.dataset.data_dir={tmp}/empty"],
        "tfds build mnist",
    ),
    ("unknown experiment", ["--config.experiment=nope"], "nope"),
    ("unknown config key", ["--config.no_such_key=1"], "no_such_key"),
    ("steps 0", ["--config.train.steps=0"], "train.steps"),
    ("steps not a number", ["--config.train.steps=many"], "many"),
    ("batch too large", ["--config.train.batch_size=100000"], "100000"),
    ("negative lr", ["--config.optimizer.learning_rate=-1.0"], "-1.0"),
    ("label smoothing 1", ["--config.train.label_smoothing=1.0"], "label_smoothing"),
    ("negative checkpoint cadence", ["--config.checkpoint.every_steps=-5"], "every_steps"),
    ("unknown parallel mode", ["--config.parallel.mode=tpu_pod"], "tpu_pod"),
    (
        "warmup longer than training",
        ["--config.schedule.name=warmup_cosine", "--config.schedule.warmup_steps=10000"],
        "warmup_steps",
    ),
    ("missing config file", ["--config=configs/nope.py"], "nope.py"),
    (
        "every head of a block removed",
        [
            "--config=configs/digits_vit_compress.py",
            "--config.prune.structured_rules=(('.*/heads', 0.9), ('.*/mlp', 0.5))",
        ],
        "4 of the 4 units of group 'block1/heads'",
    ),
    ("stray argument", ["extra"], "extra"),
]


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every CLI case run once, four at a time (each is mostly interpreter and jax start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for name, overrides, _ in CLI:  # temp dirs made here: mktemp is not thread-safe
        tmp = tmp_path_factory.mktemp("case")
        wd = tmp / "w"
        wd.mkdir()
        (wd / "keep.txt").write_text("existing")
        overrides = [o.replace("{tmp}", str(tmp)) for o in overrides]
        config = [] if any(o.startswith("--config=") for o in overrides) else [f"--config={CNN}"]
        jobs.append((name, wd, [*config, f"--workdir={wd}", *overrides]))

    def run(job):
        name, wd, args = job
        return name, (cli(*args), wd)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, jobs))


@pytest.mark.parametrize("case", CLI, ids=[c[0] for c in CLI])
def test_cli_bad_input(case, cli_results):
    name, _, fragment = case
    result, wd = cli_results[name]
    line = one_error_line(result)
    assert fragment in line, line
    assert sorted(os.listdir(wd)) == ["keep.txt"]
    assert (wd / "keep.txt").read_text() == "existing"


def test_cli_unwritable_workdir(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits: use a path under a regular file instead.
        target = tmp_path / "file" / "sub"
        (tmp_path / "file").write_text("x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "sub"
    r = cli(f"--config={CNN}", f"--workdir={target}", "--config.train.steps=1")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "workdir" in lines[0], r.stderr


def test_cli_config_json_unchanged_on_refusal(tmp_path):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"seed": 7}))
    r = cli(f"--config={CNN}", f"--workdir={wd}", "--config.train.steps=1")
    assert r.returncode == 2
    assert json.loads((wd / "config.json").read_text()) == {"seed": 7}
    assert np.array_equal(sorted(os.listdir(wd)), ["config.json"])
