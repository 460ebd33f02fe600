"""Hyperparameter search: shared studies, dead workers, pruning, the experiment, the dashboard."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from helpers import load_config

from jaxopt_ft import experiments, hpo

HERE = os.path.dirname(os.path.abspath(__file__))
HPO = os.path.join(os.path.dirname(HERE), "configs", "mnist1d_hpo.py")
TINY = {
    "model.name": "logistic",
    "train.steps": 20,
    "hpo.eval_every": 10,
    "hpo.trials": 3,
    "hpo.pruner": "none",
    "schedule.warmup_steps": 2,
}


def _worker(url, name, n, mode):
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "hpo_worker.py"), url, name, str(n), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _states(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return [t.state.name for t in study.get_trials()], study


def test_two_workers_share_one_study(tmp_path):
    # The same command twice at once: one workdir, one SQLite study, 6 trials between them.
    cmd = [
        sys.executable, "-m", "jaxopt_ft.cli", f"--config={HPO}", f"--workdir={tmp_path}",
        *[f"--config.{k}={v}" for k, v in TINY.items()],
        "--config.hpo.trials=6", "--config.hpo.retrain=False",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    workers = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    states, study = _states(f"sqlite:///{tmp_path / 'study.db'}", "hpo")
    finished = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6, states
    # A surplus trial (two workers asking at the same instant) is the only kind of failure.
    assert all(t.user_attrs.get("surplus") for t in study.get_trials() if t.state.name == "FAIL")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["trials"] == len(states) and len(report["rows"]) == len(states)


def test_racing_workers_finish_exactly_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    workers = [_worker(url, "shared", 5, "work") for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err[-2000:]
    states, study = _states(url, "shared")
    assert states.count("COMPLETE") == 5, states


def test_killed_worker_fails_its_trial_and_the_study_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    w = _worker(url, "hpo", 3, "hang")
    assert w.stdout.readline().startswith("running 0")
    os.kill(w.pid, signal.SIGKILL)
    w.wait(timeout=30)
    assert _states(url, "hpo")[0] == ["RUNNING"]
    time.sleep(3.5)  # past the grace period of two 1 s heartbeats (timestamps are whole seconds)
    config = load_config(HPO, overrides={**TINY, "hpo.storage": url, "hpo.heartbeat_s": 1})
    module, settings = experiments.prepare(config)
    (tmp_path / "wd").mkdir()
    report = module.run(settings, str(tmp_path / "wd"))
    states, _ = _states(url, "hpo")
    assert states == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert report["trials"] == 4 and report["states"] == {"fail": 1, "complete": 3}
    assert 0.0 < report["best_test_accuracy"] <= 1.0
    assert report["best_overrides"].startswith("--config.optimizer.name=")
    for name in ("optimization_history.png", "param_importances.png", "parallel_coordinate.png"):
        assert (tmp_path / "wd" / name).stat().st_size > 1000
    # Re-running a finished study trains nothing more and reports the same best trial.
    again = module.run(settings, str(tmp_path / "wd"))
    assert again["trials"] == 4 and again["best_trial"] == report["best_trial"]


def _fed_study(pruner, curves):
    # A fixed name: Hyperband assigns trials to brackets by hashing it with the trial number.
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="fed")
    for curve in curves:
        trial = study.ask()
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
    return study


@pytest.mark.parametrize("name", ["asha", "median", "hyperband"])
def test_pruner_stops_a_diverging_curve(name):
    good = [[0.3 + 0.05 * k + 0.01 * i for k in range(9)] for i in range(6)]
    diverging = [0.35, 0.25, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    pruner = hpo.make_pruner(name, min_resource=1, max_resource=9)
    trials = _fed_study(pruner, [*good, diverging]).get_trials()
    assert trials[-1].state.name == "PRUNED"
    assert max(trials[-1].intermediate_values) < 9
    with pytest.raises(ValueError, match="'nope'"):
        hpo.make_pruner("nope", min_resource=1, max_resource=9)
    # "none" never prunes.
    nop = _fed_study(hpo.make_pruner("none", min_resource=1, max_resource=9), [*good, diverging])
    assert nop.get_trials()[-1].state.name == "COMPLETE"


BAD = [
    ({"hpo.sampler": "annealing"}, "annealing"),
    ({"hpo.pruner": "sometimes"}, "sometimes"),
    ({"hpo.space": {"learning_rate": ("log", 0.1, 0.01)}}, "inverted"),
    ({"hpo.space": {"learning_rate": ("log", 0.0, 0.01)}}, "0 < low"),
    ({"hpo.space": {"dropout": ("uniform", 0.0, 0.5)}}, "'dropout'"),
    ({"hpo.space": {"optimizer": ("choice", ())}}, "empty"),
    ({"hpo.space": {}}, "hpo.space"),
    ({"hpo.space": {"learning_rate": ("normal", 0.1, 1.0)}}, "'normal'"),
    ({"hpo.sampler": "grid"}, "grid"),
    (
        {"hpo.sampler": "grid", "hpo.space": {"optimizer": ("choice", ("sgd", "adam"))}},
        "hpo.trials=3 exceeds the 2 points",
    ),
    ({"hpo.storage": "nosuchdb://user@host/db"}, "nosuchdb"),
    ({"hpo.storage": "sqlite:////no/such/dir/study.db"}, "cannot be opened"),
    ({"hpo.storage": "study.db"}, "not a database URL"),
    ({"hpo.evaluator": "population"}, "optimizer"),
    ({"schedule.warmup_steps": 20}, "warmup_steps"),
    (
        {
            "hpo.evaluator": "population",
            "hpo.population": 3,
            "hpo.space": {"learning_rate": ("log", 1e-3, 1.0)},
            "parallel.mode": "sharding",
            "train.batch_size": 96,
        },
        "3 members does not divide over 8 devices",
    ),
]


@pytest.mark.parametrize("overrides, match", BAD)
def test_bad_hpo_inputs(overrides, match):
    with pytest.raises(ValueError, match=match) as e:
        experiments.prepare(load_config(HPO, overrides={**TINY, **overrides}))
    assert "\n" not in str(e.value)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_dashboard_serves_a_finished_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="done", direction="maximize")
    study.optimize(lambda t: -((t.suggest_float("x", -1, 1) - 0.2) ** 2), n_trials=3)
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    server = subprocess.Popen(
        [exe, url, "--port", str(port), "--host", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/studies"
    try:
        listing = None
        for _ in range(150):
            try:
                listing = _get_json(base)
                break
            except OSError:
                time.sleep(0.2)
        assert listing is not None, "optuna-dashboard did not answer"
        [summary] = listing["study_summaries"]
        assert summary["study_name"] == "done"
        detail = _get_json(f"{base}/{summary['study_id']}")
        assert len(detail["trials"]) == 3
        assert detail["best_trials"][0]["values"][0] == pytest.approx(study.best_value)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_population_evaluator_trains_trials_together(tmp_path):
    overrides = {
        **TINY,
        "hpo.trials": 4,
        "hpo.evaluator": "population",
        "hpo.population": 2,
        "hpo.retrain": False,
        "hpo.space": {"learning_rate": ("log", 1e-3, 1.0), "label_smoothing": ("uniform", 0, 0.2)},
    }
    module, settings = experiments.prepare(load_config(HPO, overrides=overrides))
    report = module.run(settings, str(tmp_path))
    assert report["states"] == {"complete": 4}
    rows = report["rows"]
    assert len({r["learning_rate"] for r in rows}) == 4
    assert all(r["steps"] == 20 and 0.0 < r["val_accuracy"] <= 1.0 for r in rows)
    assert report["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)
