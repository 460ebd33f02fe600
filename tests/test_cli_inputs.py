"""The command line in process (`cli.invoke`): help, describe, summary, and hostile inputs.

Every hostile case exits 2 with one ``jaxopt-ft: error:`` line, no traceback, and leaves the
workdir as it was. The subprocess catalogue (tests/test_bad_inputs.py) covers the process
boundary; signals and concurrent runs are in tests/test_faults.py.
"""

import json
import os

import pytest

from jaxopt_ft import cli, cli_text, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "configs", "mnist1d_cnn.py")
MULTITASK = os.path.join(ROOT, "configs", "mnist1d_multitask.py")

BROKEN = {
    "raising.py": "def get_config(arg=None):\n    raise RuntimeError('boom')\n",
    "syntax.py": "def get_config(:\n",
    "imports.py": "import no_such_module_here\n\ndef get_config():\n    pass\n",
    "binary.py": "\x00\x01\x02not python",
    "int.py": "def get_config():\n    return 5\n",
    "dict.py": "def get_config():\n    return {'train': {'steps': 1}}\n",
    "noentry.py": "X = 1\n",
}

# (id, arguments ({tmp}: a folder with BROKEN's files, {cnn}: the CNN config), fragment)
HOSTILE = [
    ("config raises", ["--config={tmp}/raising.py"], "RuntimeError: boom"),
    ("config syntax error", ["--config={tmp}/syntax.py"], "SyntaxError"),
    ("config import error", ["--config={tmp}/imports.py"], "no_such_module_here"),
    ("config not python", ["--config={tmp}/binary.py"], "null bytes"),
    ("config returns int", ["--config={tmp}/int.py"], "returned int"),
    ("config returns dict", ["--config={tmp}/dict.py"], "returned dict"),
    ("config without get_config", ["--config={tmp}/noentry.py"], "get_config"),
    ("config returns int, override", ["--config={tmp}/int.py", "--config.seed=1"], "int.py"),
    ("missing config, override", ["--config={tmp}/nope.py", "--config.seed=1"], "nope.py"),
    ("empty config path", ["--config="], "empty"),
    ("bad config arg", ["--config={cnn}:foo"], "'foo'"),
    ("unknown task arg", [f"--config={MULTITASK}:nope"], "unknown task"),
    ("misspelled section", ["--config={cnn}", "--config.trian.steps=3"], "did you mean 'train'"),
    ("misspelled key", ["--config={cnn}", "--config.train.stpes=3"], "did you mean 'steps'"),
    ("wrong value type", ["--config={cnn}", "--config.train.batch_size=1.5"], "batch_size"),
    ("unknown flag", ["--config={cnn}", "--wrokdir=x"], "wrokdir"),
    ("unknown command", ["evaluat", "--config={cnn}"], "evaluat"),
    (
        "steps beyond int64",
        ["--config={cnn}", "--config.train.steps=99999999999999999999"],
        "2**31",
    ),
    ("steps beyond int32", ["--config={cnn}", "--config.train.steps=4294967296"], "train.steps"),
    ("eval batch 0", ["--config={cnn}", "--config.eval.batch_size=0"], "eval.batch_size"),
    ("keep 0 checkpoints", ["--config={cnn}", "--config.checkpoint.max_to_keep=0"], "max_to_keep"),
    (
        "data_dir is a file",
        ["--config={cnn}", "--config.dataset.data_dir={tmp}/int.py"],
        "data_dir",
    ),
    (
        "data_dir under a file",
        ["--config={cnn}", "--config.dataset.data_dir={tmp}/int.py/d"],
        "file",
    ),
    ("data_dir not creatable", ["--config={cnn}", "--config.dataset.data_dir=/proc/nope"], "/proc"),
    ("seed negative", ["--config={cnn}", "--config.seed=-1"], "seed"),
    ("describe without config", ["describe"], "--config"),
    ("summary of no run", ["summary"], "holds no run"),
    ("evaluate no run", ["evaluate"], "holds no run"),
    ("no config", [], "--config is required"),
]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    for name, text in BROKEN.items():
        (folder / name).write_text(text)
    return folder


def _invoke(capsys, *args):
    code = cli.invoke(list(args))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_one_line(case, broken, tmp_path, capsys):
    _, args, fragment = case
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "keep.txt").write_text("existing")
    args = [a.format(tmp=broken, cnn=CNN) for a in args]
    code, _, err = _invoke(capsys, *args, f"--workdir={wd}")
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("jaxopt-ft: error:"), err
    assert "Traceback" not in err[0] and "\\n" not in err[0]
    assert fragment in err[0], err[0]
    assert sorted(os.listdir(wd)) == ["keep.txt"]
    assert (wd / "keep.txt").read_text() == "existing"


def test_busy_workdir_is_refused_and_left_alone(tmp_path, capsys):
    wd = tmp_path / "w"
    wd.mkdir()
    with workdir.lock(str(wd)):
        held = (wd / "lock").read_text()
        code, _, err = _invoke(capsys, f"--config={CNN}", f"--workdir={wd}")
        assert code == 2 and len(err) == 1 and "in use" in err[0] and str(os.getpid()) in err[0]
        assert sorted(os.listdir(wd)) == ["lock"] and (wd / "lock").read_text() == held
    assert os.listdir(wd) == []  # the holder removes its lock file


def test_stale_lock_file_of_a_killed_run_is_taken_over(tmp_path):
    (tmp_path / "lock").write_text("pid 1 on a host that died")  # no process holds the flock
    with workdir.lock(str(tmp_path)):
        assert str(os.getpid()) in (tmp_path / "lock").read_text()


def test_help_lists_configs_experiments_models_and_datasets(capsys):
    for flag in ("-h", "--help", "help"):
        code, out, err = _invoke(capsys, flag)
        assert code == 0 and not err
        for name in ("mnist1d_cnn.py", "compress", "lenet5", "digits", "exit codes", "describe"):
            assert name in out, name
    assert "The MNIST-1D paper's CNN" in out  # a config's one-line docstring
    code, out, _ = _invoke(capsys, "--helpfull")
    assert code == 0 and "--[no]helpfull" in out


def test_describe_prints_every_key_with_value_and_meaning(capsys):
    code, out, _ = _invoke(capsys, f"--config={CNN}", "--help", "--config.train.steps=7")
    assert code == 0
    assert "train.steps = 7" in out and "# training steps" in out
    assert "model.channels" in out or "model.width_mult" in out
    code2, out2, _ = _invoke(capsys, "describe", f"--config={CNN}", "--config.train.steps=7")
    assert code2 == 0 and out2 == out


def test_model_switch_drops_the_other_models_options(capsys):
    compress = os.path.join(ROOT, "configs", "mnist1d_compress.py")
    code, out, err = _invoke(capsys, "describe", f"--config={compress}", "--config.model.name=mlp")
    assert code == 0, err
    assert len(err) == 1 and "dropped" in err[0] and "channels" in err[0] and "'mlp'" in err[0]
    assert "model.name = 'mlp'" in out and "model.channels" not in out
    # An option given on the command line is the user's: kept, and checked.
    code, _, err = _invoke(
        capsys, "describe", f"--config={compress}", "--config.model.name=mlp", "--config.seed=1"
    )
    assert code == 0


def test_summary_of_a_run(tmp_path):
    wd = tmp_path / "run"
    (wd / "checkpoints" / "train" / "40").mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps({"experiment": "train", "model": {"name": "cnn"}}))
    (wd / "metrics.jsonl").write_text('{"phase": "train", "step": 40, "loss": null}\n')
    text = cli_text.summary(str(wd))
    assert "phase train: checkpoint at step 40" in text and "no report yet" in text
