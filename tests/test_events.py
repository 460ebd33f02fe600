"""TensorBoard event files: loop.fit's scalars and the report's plots, read back with
TensorBoard's own event reader."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import optax
import toys
from tensorboard.backend.event_processing import event_accumulator

from jaxopt_ft import data, events, loop, optim, report, train


def _read(directory):
    acc = event_accumulator.EventAccumulator(
        directory, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def _fit(workdir, steps, schedule, **kw):
    x, label = toys.data()
    ds = data.Dataset(x=x, label=label, num_classes=3, name="toy")
    model = toys.MLP()
    params, _ = train.init_model(model, jax.random.PRNGKey(0), x[:1])
    tx = optim.make("sgd", learning_rate=schedule, skip_nonfinite=True, accumulate_steps=2)
    state = train.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return loop.fit(
        state,
        train.make_train_step(),
        lambda s: data.train_batches(ds, batch_size=16, seed=0, start_step=s),
        steps=steps,
        key=jax.random.PRNGKey(1),
        workdir=str(workdir),
        log_every=2,
        progress=False,
        learning_rate=schedule,
        **kw,
    )


def test_fit_writes_the_logged_scalars(tmp_path):
    schedule = optax.linear_schedule(0.1, 0.0, transition_steps=6)
    _fit(tmp_path, 12, schedule)
    files = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert files and all(f.startswith(events.logdir(str(tmp_path), "train")) for f in files)
    acc = _read(events.logdir(str(tmp_path), "train"))
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    for name in ("loss", "accuracy", "learning_rate", "sparsity", "steps_per_s"):
        points = acc.Scalars(f"train/{name}")
        assert [p.step for p in points] == [r["step"] for r in records], name
        np.testing.assert_allclose([p.value for p in points], [r[name] for r in records], 1e-6)
    assert [p.value for p in acc.Scalars("train/nonfinite_total")] == [0.0] * 6
    # Accumulating 2 micro-steps per update: after step 2k the last update was update k-1.
    rates = [p.value for p in acc.Scalars("train/learning_rate")]
    np.testing.assert_allclose(rates, [schedule(k // 2 - 1) for k in (2, 4, 6, 8, 10, 12)])
    sparsity = [p.value for p in acc.Scalars("train/sparsity")]
    assert all(0.0 <= v < 0.1 for v in sparsity)


def test_resumed_phase_purges_points_past_the_checkpoint(tmp_path):
    schedule = optax.constant_schedule(0.05)
    _fit(tmp_path, 8, schedule, checkpoint_every=4)
    ckpt = os.path.join(tmp_path, "checkpoints", "train")
    for step in os.listdir(ckpt):
        if step.isdigit() and int(step) > 4:
            shutil.rmtree(os.path.join(ckpt, step))  # as if killed after step 4's checkpoint
    _fit(tmp_path, 8, schedule, checkpoint_every=4)
    points = _read(events.logdir(str(tmp_path), "train")).Scalars("train/loss")
    assert [p.step for p in points] == [2, 4, 6, 8]


def test_report_plots_become_images(tmp_path):
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    report.save_plot(fig, str(tmp_path), "curve.png", dpi=50)
    acc = _read(events.logdir(str(tmp_path), "report"))
    (image,) = acc.Images("curve")
    assert (image.width, image.height) == (100, 75)
