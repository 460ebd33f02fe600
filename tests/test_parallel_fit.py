"""`loop.fit(..., strategy=...)` on 8 simulated CPU devices: the same run under every mode.

Each capability's own step function (plain training, pruning wrapper + QAT, partial fine-tuning,
PCGrad multi-task) trains 20 steps through `fit` under none / sharding (+FSDP) / pmap; the
per-step losses (metrics.jsonl, log_every=1) and final params must agree to 1e-5, and the
checkpoint written on 8 devices must resume on another device count.
"""

import functools
import json

import jax
import numpy as np
import optax
import pytest

from jaxopt_ft import finetune, loop, models, parallel, prune, quant, train, tree
from jaxopt_ft import multitask as mt

BATCH = 32
STEPS = 20
RTOL = 1e-5
MODEL = models.get("cnn", channels=(8, 16, 16))
MODES = [("sharding", False), ("sharding", True), ("pmap", False)]


def _data(steps: int = STEPS):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps, BATCH, 40)).astype(np.float32)
    y = rng.integers(0, 10, size=(steps, BATCH)).astype(np.int32)
    return x, y


def plain_batches(start):
    x, y = _data()
    for k in range(start, STEPS):
        yield {"x": x[k], "label": y[k]}


def multitask_batches(start):
    x, y = _data()
    for k in range(start, STEPS):
        yield {"x": x[k], "targets": {"digit": y[k], "parity": y[k] % 2}}


def init_params(model=MODEL):
    return model.init(jax.random.PRNGKey(0), np.zeros((1, 40), np.float32))["params"]


def case_train(strategy):
    state = train.TrainState.create(apply_fn=MODEL.apply, params=init_params(), tx=optax.adam(1e-2))
    return state, train.make_train_step(axis_name=strategy.axis_name), plain_batches


def case_compress(strategy):
    # Pruning masks live in the optimizer state; QAT's activation ranges come from each batch
    # (under pmap reduced over the device axis, so they are the global batch's).
    schedule = prune.polynomial(final_sparsity=0.5, begin_step=4, end_step=12, frequency=4)
    tx = prune.wrap(optax.adam(1e-2), schedule, prune.magnitude())
    state = train.TrainState.create(apply_fn=MODEL.apply, params=init_params(), tx=tx)
    apply_fn = quant.fake_quant_apply_fn(
        MODEL, weight_bits=4, act_bits=8, axis_name=strategy.axis_name
    )
    step = train.make_train_step(apply_fn=apply_fn, axis_name=strategy.axis_name)
    return state, step, plain_batches


def case_partial(strategy):
    params = init_params()
    labels = finetune.freeze_labels(params, [("(conv1|conv2)/.*", finetune.FROZEN), (".*", "head")])
    tx = finetune.optimizer(labels, {"head": optax.adam(1e-2)})
    state = train.TrainState.create(apply_fn=MODEL.apply, params=params, tx=tx)
    mask = finetune.trainable_mask(labels)
    return state, train.make_train_step(trainable=mask, axis_name=strategy.axis_name), plain_batches


def case_pcgrad(strategy):
    tasks = mt.make_tasks(
        {
            "digit": {"kind": "classification", "num_classes": 10},
            "parity": {"kind": "classification", "num_classes": 2},
        }
    )
    method = mt.Method(name="pcgrad")
    model = mt.MultiTaskModel(models.get("cnn", channels=(8, 16, 16)), tasks)
    state, method = mt.init_state(
        model, method, key=jax.random.PRNGKey(0), sample_x=np.zeros((1, 40)), tx=optax.adam(1e-2)
    )
    step = mt.make_train_step(tasks, method, axis_name=strategy.axis_name)
    return state, step, multitask_batches


CASES = {
    "train": case_train,
    "compress": case_compress,
    "partial": case_partial,
    "pcgrad": case_pcgrad,
}


def losses(workdir) -> np.ndarray:
    with open(workdir / "metrics.jsonl") as f:
        return np.array([json.loads(line)["loss"] for line in f])


@functools.cache
def strategy_of(mode, fsdp, devices=None):
    return parallel.make(mode, fsdp=fsdp, devices=devices)


def run(case, mode, fsdp, workdir, *, steps=STEPS, devices=None):
    strategy = strategy_of(mode, fsdp, devices)
    state, step, batches = CASES[case](strategy)
    state, _ = loop.fit(
        state,
        step,
        batches,
        steps=steps,
        key=jax.random.PRNGKey(1),
        workdir=str(workdir),
        log_every=1,
        checkpoint_every=10,
        progress=False,
        strategy=strategy,
    )
    return state


_reference_cache = {}


def reference(case, tmp_path_factory):
    if case not in _reference_cache:
        workdir = tmp_path_factory.mktemp(f"{case}_none")
        state = run(case, "none", False, workdir)
        _reference_cache[case] = (losses(workdir), tree.flatten(train.numpy_tree(state.params)))
    return _reference_cache[case]


def assert_same(workdir, state, ref):
    ref_losses, ref_params = ref
    np.testing.assert_allclose(losses(workdir), ref_losses, rtol=RTOL, atol=0)
    params = tree.flatten(train.numpy_tree(state.params))
    assert params.keys() == ref_params.keys()
    for path, value in ref_params.items():
        np.testing.assert_allclose(params[path], value, rtol=0, atol=RTOL, err_msg=path)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode, fsdp", MODES, ids=["sharding", "fsdp", "pmap"])
def test_fit_matches_single_device(case, mode, fsdp, tmp_path, tmp_path_factory):
    ref = reference(case, tmp_path_factory)
    assert len(ref[0]) == STEPS
    assert ref[0][-1] < ref[0][0]  # it trains, or matching would prove little
    state = run(case, mode, fsdp, tmp_path)
    # fit hands back an ordinary single-device state with the original optimizer.
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.devices()) == 1
    assert_same(tmp_path, state, ref)


def test_pruning_really_ran_under_pmap(tmp_path):
    state = run("compress", "pmap", False, tmp_path)
    kernel = np.asarray(state.params["conv2"]["kernel"])
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)
    assert prune.find_masks(state.opt_state) is not None


def test_partial_keeps_frozen_layers_bit_identical_under_pmap(tmp_path):
    state = run("partial", "pmap", False, tmp_path)
    start = init_params()
    for layer in ("conv1", "conv2"):
        np.testing.assert_array_equal(
            np.asarray(state.params[layer]["kernel"]), np.asarray(start[layer]["kernel"])
        )


@pytest.mark.parametrize(
    "first, then",
    [
        (("sharding", True, None), ("none", False, None)),
        (("pmap", False, None), ("sharding", False, 4)),
    ],
    ids=["fsdp8-to-1", "pmap8-to-4"],
)
def test_resume_on_another_device_count(first, then, tmp_path, tmp_path_factory):
    ref = reference("train", tmp_path_factory)
    run("train", *first[:2], tmp_path, steps=10, devices=first[2])
    state = run("train", *then[:2], tmp_path, devices=then[2])
    assert_same(tmp_path, state, ref)
