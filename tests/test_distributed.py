"""Multi-process training through jax.distributed, and checkpoints moved between device counts.

Child processes run tests/parallel_worker.py with their own ``XLA_FLAGS`` device count; this
process (8 simulated devices) computes the references with the same worker functions.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import parallel_worker as worker
import pytest
from jax.sharding import PartitionSpec

from jaxopt_ft import checkpoint, parallel, tree

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")
TIMEOUT_S = 300
TOL = 1e-5


def spec(*axes) -> str:
    """How a sharding's spec prints (the worker reports specs as strings)."""
    return str(PartitionSpec(*axes))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def spawn(args, *, devices, out, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXOPT_FT_")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_extra or {})
    log = open(f"{out}.log", "w")  # noqa: SIM115 -- closed in finish()
    proc = subprocess.Popen(
        [sys.executable, WORKER, *args, "--out", str(out)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log


def finish(children):
    """Waits for every child; fails with the tail of the log of any that did not exit 0."""
    failures = []
    for (proc, log), name in children:
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        log.close()
        if code != 0:
            with open(log.name) as f:
                failures.append(f"{name} exited {code}:\n{f.read()[-3000:]}")
    if failures:
        pytest.fail("\n\n".join(failures))


def load(out):
    with open(f"{out}.json") as f:
        meta = json.load(f)
    with np.load(f"{out}.npz") as z:
        return meta, {k: z[k] for k in z.files}


def assert_params(got, want, prefix=""):
    assert {k[len(prefix) :] for k in got if k.startswith(prefix)} == set(want)
    for path, value in want.items():
        np.testing.assert_allclose(got[prefix + path], value, rtol=0, atol=TOL, err_msg=path)


def test_two_processes_of_four_devices_match_one_of_eight(tmp_path):
    # FSDP over a mesh spanning both processes (gathers and reductions cross the process
    # border through gloo), then pmap over the 8 devices of both; each run's checkpoint is
    # written by both processes together.
    port = free_port()
    ckpt_dir = tmp_path / "ckpt"
    out = tmp_path / "run"
    children = []
    for pid in range(2):
        env = {
            parallel.ENV_COORDINATOR: f"localhost:{port}",
            parallel.ENV_NUM_PROCESSES: "2",
            parallel.ENV_PROCESS_ID: str(pid),
        }
        args = ["train", "--runs", "fsdp,pmap", "--ckpt", str(ckpt_dir)]
        children.append((spawn(args, devices=4, out=f"{out}{pid}", env_extra=env), f"p{pid}"))
    # The references (1 process x 8 devices) run meanwhile.
    refs = {"fsdp": worker.run_training("sharding", True), "pmap": worker.run_training("pmap")}
    finish(children)
    meta, arrays = load(f"{out}0")
    assert not os.path.exists(f"{out}1.json")  # only process 0 writes
    assert (meta["processes"], meta["devices"], meta["collectives"]) == (2, 8, "gloo")
    for name, ref in refs.items():
        assert meta["specs"][name] == ref["specs"]  # same layout over the 2 x 4 devices
        losses = arrays.pop(f"{name}:losses")
        np.testing.assert_allclose(losses, ref["losses"], rtol=TOL, atol=0, err_msg=name)
        assert_params(arrays, ref["params"], prefix=f"{name}:")
    assert meta["specs"]["fsdp"]["conv2/kernel"] == spec(None, None, "data")
    # The collectively written FSDP checkpoint restores here, on one process of 8 devices.
    strategy = parallel.make("sharding", fsdp=True)
    target = strategy.prepare(worker.new_state()).tree()
    step, restored = checkpoint.Checkpointer(ckpt_dir / "fsdp").restore(target)
    assert step == worker.STEPS
    assert restored["params"]["conv2"]["kernel"].sharding.spec == PartitionSpec(None, None, "data")
    params = tree.flatten(jax.device_get(restored["params"]))
    assert_params(params, refs["fsdp"]["params"])


def test_checkpoint_from_8_devices_restores_on_1_and_4(tmp_path):
    runs = {
        "replicated": worker.run_training("sharding", False),
        "fsdp": worker.run_training("sharding", True),
        "pmap": worker.run_training("pmap", False),
    }
    dirs = {}
    for name, run in runs.items():
        dirs[name] = str(tmp_path / name)
        worker.save(run["state"], dirs[name])
    ckpts = ",".join(dirs.values())
    one, four = tmp_path / "on1", tmp_path / "on4"
    children = [
        (spawn(["restore", "--ckpt", ckpts, "--layout", "plain,plain,plain"], devices=1,
               out=one), "1 device"),
        (spawn(["restore", "--ckpt", ckpts, "--layout", "replicated,fsdp,fsdp"], devices=4,
               out=four), "4 devices"),
    ]  # fmt: skip
    finish(children)
    for out, devices in ((one, 1), (four, 4)):
        meta, arrays = load(out)
        assert meta["devices"] == devices
        for i, run in enumerate(runs.values()):
            assert meta["restored"][i]["step"] == worker.STEPS
            assert_params(arrays, run["params"], prefix=f"{i}:")
    specs_on_1 = [r["specs"]["head/kernel"] for r in load(one)[0]["restored"]]
    assert specs_on_1 == ["single-device"] * 3
    specs_on_4 = [r["specs"] for r in load(four)[0]["restored"]]
    assert specs_on_4[0]["conv2/kernel"] == spec()
    # FSDP on 4 devices: (3, 8, 16) is now split 4 ways, also when saved unsharded by pmap.
    assert specs_on_4[1]["conv2/kernel"] == spec(None, None, "data")
    assert specs_on_4[2]["head/bias"] == spec()  # 10 does not divide by 4
    assert specs_on_4[2]["conv1/kernel"] == spec(None, None, "data")


def test_cli_two_processes_match_one_and_only_process_0_reports(tmp_path):
    # The command line as a 2-process job (4 CPU devices each) on one shared workdir, against
    # the same command on one process of 8 devices: same test loss, one set of reports. (Over
    # many Adam steps the two reduction orders drift apart like any two machines: 5e-4 after
    # 100 steps; 30 steps stay within 1e-4.)
    from helpers import cli, config_path

    args = [
        f"--config={config_path('mnist1d_cnn')}",
        "--config.parallel.mode=sharding",
        "--config.train.steps=30",
        "--config.checkpoint.every_steps=15",
        "--config.train.log_every=15",
    ]
    ref = cli(*args, f"--workdir={tmp_path / 'one'}", devices=8)
    assert ref.returncode == 0, ref.stderr[-3000:]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXOPT_FT_")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    wd = tmp_path / "two"
    procs = []
    for pid in range(2):
        env_p = {
            **env,
            "JAXOPT_FT_COORDINATOR": f"localhost:{port}",
            "JAXOPT_FT_NUM_PROCESSES": "2",
            "JAXOPT_FT_PROCESS_ID": str(pid),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "jaxopt_ft.cli", *args, f"--workdir={wd}"],
                env=env_p,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    rows = [[ln for ln in out.splitlines() if ln.startswith("{")] for out, _ in outs]
    assert len(rows[0]) == 1 and rows[1] == []  # only process 0 prints the row (gloo logs aside)
    one = json.loads((tmp_path / "one" / "report.json").read_text())["rows"][0]
    two = json.loads((wd / "report.json").read_text())["rows"][0]
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)
    steps = [json.loads(line)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [15, 30]  # written once, by process 0
    assert sorted(os.listdir(wd / "checkpoints" / "train")) == ["15", "30"]
