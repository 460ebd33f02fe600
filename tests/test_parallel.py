"""Data-parallel modes on 8 simulated CPU devices: same numbers as one device, clear errors.

Training runs come from tests/parallel_worker.py (cached per pytest process, shared with
tests/test_distributed.py): a 3-conv CNN, 20 Adam steps on a global batch of 32.
"""

import jax
import numpy as np
import optax
import parallel_worker as worker
import pytest
from jax.sharding import Mesh, PartitionSpec

from jaxopt_ft import parallel, prune, train, tree
from jaxopt_ft.parallel import core

RTOL = 1e-5


def spec(*axes) -> str:
    """How a sharding's spec prints (the worker reports specs as strings)."""
    return str(PartitionSpec(*axes))


def assert_same_run(run, ref):
    np.testing.assert_allclose(run["losses"], ref["losses"], rtol=RTOL, atol=0)
    assert run["params"].keys() == ref["params"].keys()
    for path, value in ref["params"].items():
        np.testing.assert_allclose(run["params"][path], value, rtol=0, atol=RTOL, err_msg=path)


@pytest.fixture(scope="module")
def reference():
    ref = worker.run_training("none")
    # The run must actually train, or matching it would prove nothing.
    assert ref["losses"][-1] < ref["losses"][0] - 0.05
    start = worker.initial_params()
    moved = [np.max(np.abs(ref["params"][p] - v)) for p, v in tree.flatten(start).items()]
    assert min(moved) > 1e-3
    return ref


@pytest.mark.parametrize("mode, fsdp", [("sharding", False), ("sharding", True), ("pmap", False)])
def test_modes_match_single_device(reference, mode, fsdp):
    run = worker.run_training(mode, fsdp)
    assert_same_run(run, reference)
    if mode == "sharding" and not fsdp:
        assert set(run["specs"].values()) == {spec()}


def test_fsdp_really_shards_params():
    specs = worker.run_training("sharding", True)["specs"]
    assert specs == {
        "conv1/bias": spec(
            "data",
        ),  # (8,)
        "conv1/kernel": spec(None, None, "data"),  # (5, 1, 8)
        "conv2/bias": spec(
            "data",
        ),  # (16,)
        "conv2/kernel": spec(None, None, "data"),  # (3, 8, 16): largest divisible
        "conv3/bias": spec(
            "data",
        ),
        "conv3/kernel": spec(None, None, "data"),
        "head/bias": spec(),  # (10,): nothing divides by 8
        "head/kernel": spec("data", None),  # (80, 10)
    }
    state = worker.run_training("sharding", True)["state"]
    mu = state.opt_state[0].mu["head"]["kernel"]  # Adam moments follow their params
    assert mu.sharding.spec == PartitionSpec("data", None)
    assert mu.addressable_shards[0].data.shape == (10, 10)


def test_pmap_step_that_averages_its_own_gradients(reference):
    # Classic pmap code written by hand: lax.pmean(grads, axis_name) inside the step; the
    # strategy adds nothing but the placement.
    assert_same_run(worker.run_training("pmap", False, "axis_step"), reference)


def test_pruning_and_qat_match_under_sharding_fsdp():
    # prune.wrap masks (in opt_state) + fake-quant forward with per-batch activation ranges:
    # under jit sharding the ranges are global minima/maxima, so they equal one device's.
    ref = worker.run_training("none", False, "compress")
    assert_same_run(worker.run_training("sharding", True, "compress"), ref)
    kernel = ref["params"]["conv2/kernel"]
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)  # pruning really ran


def test_pruning_and_qat_match_under_pmap():
    # Under pmap each device sees B/n examples, so QAT uses fixed (calibrated) ranges here.
    ref = worker.run_training("none", False, "compress_calibrated")
    assert_same_run(worker.run_training("pmap", False, "compress_calibrated"), ref)


def test_pmap_prepare_and_unwrap_change_only_the_layout():
    state = worker.new_state("compress")
    strategy = parallel.make("pmap", devices=4)
    placed = strategy.prepare(state)
    assert placed.params["head"]["kernel"].shape == (4, 80, 10)
    assert placed.tx is state.tx  # the optimizer is never wrapped or patched
    again = strategy.prepare(placed)  # idempotent: no second replica axis
    assert again.params["head"]["kernel"].shape == (4, 80, 10)
    back = strategy.unwrap(placed)
    assert strategy.unwrap(back).params["head"]["kernel"].shape == (80, 10)  # idempotent
    assert back.tx is state.tx
    assert back.params["head"]["kernel"].shape == (80, 10)
    masks = prune.find_masks(parallel.local(back.opt_state))
    assert jax.tree.structure(masks) == jax.tree.structure(state.params)


def test_pmap_keeps_batch_stats_in_sync():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            x = nn.Dense(4)(x)
            return nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)

    model = Net()
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32) * np.arange(1, 9)[:, None]
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
    state = train.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.sgd(0.1),
        batch_stats=variables["batch_stats"],
    )
    strategy = parallel.make("pmap", devices=4)
    step = strategy.step(train.make_train_step(axis_name=strategy.axis_name))
    out, metrics = step(
        strategy.prepare(state), {"x": x, "label": np.zeros(8, np.int32)}, jax.random.PRNGKey(0)
    )
    mean = np.asarray(out.batch_stats["BatchNorm_0"]["mean"])
    assert mean.shape == (4, 4)
    np.testing.assert_allclose(mean, np.broadcast_to(mean[0], mean.shape), rtol=1e-6)
    # Per-device statistics were averaged: the running mean moved to half the batch mean.
    h = x @ np.asarray(variables["params"]["Dense_0"]["kernel"])
    h = h + np.asarray(variables["params"]["Dense_0"]["bias"])
    np.testing.assert_allclose(mean[0], 0.5 * h.mean(0), rtol=1e-4, atol=1e-6)
    assert np.shape(metrics["loss"]) == ()


def test_fsdp_spec_rule():
    assert parallel.fsdp_spec((3, 16, 10), 8) == PartitionSpec(None, "data", None)
    assert parallel.fsdp_spec((64, 64), 8) == PartitionSpec(None, "data")  # tie: last axis
    assert parallel.fsdp_spec((10,), 8) == PartitionSpec()
    assert parallel.fsdp_spec((), 8) == PartitionSpec()
    assert parallel.fsdp_spec((4, 8), 1) == PartitionSpec()
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    shardings = parallel.fsdp_shardings({"w": np.zeros((6, 12)), "b": np.zeros(6)}, mesh)
    assert shardings["w"].spec == PartitionSpec(None, "data")
    assert shardings["b"].spec == PartitionSpec()
    with pytest.raises(ValueError, match="'model' is not an axis"):
        parallel.fsdp_shardings({}, mesh, axis_name="model")


def test_make_fields_and_devices():
    assert parallel.MODES == ("none", "sharding", "pmap")
    none = parallel.make("none")
    assert (none.n_devices, none.axis_name, none.mesh) == (1, None, None)
    sharding = parallel.make("sharding", devices=2)
    assert sharding.n_devices == 2 and sharding.axis_name is None
    assert sharding.mesh.shape == {"data": 2}
    pmap = parallel.make("pmap")
    assert (pmap.n_devices, pmap.axis_name) == (8, "data")
    assert parallel.make("sharding", devices=jax.devices()[2:5]).n_devices == 3


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"Unknown parallel mode 'dp'.*none, sharding, pmap"):
        parallel.make("dp")
    with pytest.raises(ValueError, match="asked for 16 devices but only 8 exist"):
        parallel.make("sharding", devices=16)
    with pytest.raises(ValueError, match="asked for 9 devices"):
        parallel.make("pmap", devices=9)
    with pytest.raises(ValueError, match="devices=0 must be >= 1"):
        parallel.make("pmap", devices=0)
    with pytest.raises(ValueError, match="fsdp=True needs parallel mode 'sharding'"):
        parallel.make("pmap", fsdp=True)
    with pytest.raises(TypeError, match="fsdp must be a bool"):
        parallel.make("sharding", fsdp="yes")
    strategy = parallel.make("sharding")
    with pytest.raises(ValueError, match=r"batch size 20 does not divide by the 8 devices"):
        parallel.check_batch(20, strategy)
    parallel.check_batch(24, strategy)
    parallel.check_batch(7, parallel.make("none"))
    with pytest.raises(ValueError, match="does not divide"):
        strategy.shard_batch({"x": np.zeros((12, 40), np.float32)})
    with pytest.raises(ValueError, match="same leading batch dimension"):
        strategy.shard_batch({"x": np.zeros((8, 4)), "label": np.zeros(16)})


def test_step_before_prepare_raises():
    state = worker.new_state()
    batch = worker.batches(1)[0]
    for mode in ("sharding", "pmap"):
        strategy = parallel.make(mode)
        step = strategy.step(train.make_train_step())
        with pytest.raises(ValueError, match="strategy.prepare"):
            step(state, batch, jax.random.PRNGKey(0))


def test_shard_batch_layouts():
    batch = worker.batches(1)[0]
    sharded = parallel.make("sharding", devices=4).shard_batch(batch)
    assert sharded["x"].sharding.spec == PartitionSpec("data")
    assert sharded["x"].addressable_shards[1].data.shape == (8, 40)
    np.testing.assert_array_equal(np.asarray(sharded["label"]), batch["label"])
    stacked = parallel.make("pmap", devices=4).shard_batch(batch)
    assert stacked["x"].shape == (4, 8, 40)
    np.testing.assert_array_equal(np.asarray(stacked["x"][1]), batch["x"][8:16])
    assert parallel.process_batch(batch) is batch  # one process: everything is local
    assert parallel.process_slice(32) == slice(0, 32)


def test_local_gathers_to_one_device():
    state = worker.run_training("sharding", True)["state"]
    plain = parallel.local(state.params)
    kernel = plain["head"]["kernel"]
    assert kernel.sharding.device_set == {jax.local_devices()[0]}
    np.testing.assert_array_equal(
        np.asarray(kernel), worker.run_training("sharding", True)["params"]["head/kernel"]
    )


def test_bounded_dispatch_waits_for_the_step_before_last():
    waited = []

    class Out:
        def __init__(self, k):
            self.k = k

        def block_until_ready(self):
            waited.append(self.k)
            return self

    calls = iter(range(10))

    def run(*args):
        return None, Out(next(calls))

    step = core.bounded(run, jax.devices()[:2])
    for expected in ([], [0], [0, 1], [0, 1, 2]):
        step()
        assert waited == expected
    assert core.bounded(run, jax.devices()[:1]) is run  # nothing to deadlock on one device


def test_all_mean_is_identity_without_axis():
    grads = {"g": np.arange(3.0)}
    assert parallel.all_mean(grads, None) is grads


def test_initialize_settings():
    assert parallel.initialize(environ={}) is False  # single process: nothing to start
    env = {"JAXOPT_FT_COORDINATOR": "localhost:1234", "JAXOPT_FT_NUM_PROCESSES": "2"}
    with pytest.raises(ValueError, match=r"not process_id \(\$JAXOPT_FT_PROCESS_ID\)"):
        parallel.initialize(environ=env)
    with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
        parallel.initialize(environ={**env, "JAXOPT_FT_PROCESS_ID": "2"})
    with pytest.raises(ValueError, match="num_processes='two' is not an integer"):
        parallel.initialize(
            coordinator_address="localhost:1", num_processes="two", process_id=0, environ={}
        )
    with pytest.raises(ValueError, match="has no port"):
        parallel.initialize(
            coordinator_address="localhost", num_processes=2, process_id=0, environ={}
        )
    assert parallel.is_main_process()
