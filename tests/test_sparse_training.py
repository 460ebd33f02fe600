"""The ``sparse_training`` experiment and the FLOPs it counts."""

import os

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config

from jaxopt_ft import experiments, models, prune

CONFIG = os.path.join(ROOT, "configs", "mnist1d_sparse_training.py")


def test_kernel_uses_and_forward_flops_of_the_cnn():
    # The CNN's convs shrink a 40-long signal 40 -> 19 -> 10 -> 5 (stride 2, padding 1).
    model = models.get("cnn", channels=(4, 6, 8), num_classes=10)
    x = np.zeros((2, 40), np.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    uses = prune.kernel_uses(model.apply, variables, x)
    assert uses == {"conv1/kernel": 19, "conv2/kernel": 10, "conv3/kernel": 5, "head/kernel": 1}
    sizes = {"conv1/kernel": 5 * 1 * 4, "conv2/kernel": 3 * 4 * 6, "conv3/kernel": 3 * 6 * 8,
             "head/kernel": 5 * 8 * 10}  # fmt: skip
    want = 2 * (20 * 19 + 72 * 10 + 144 * 5 + 400 * 1)
    assert prune.forward_flops(sizes, uses) == want
    half = {p: n / 2 for p, n in sizes.items()}
    assert prune.forward_flops(half, uses) == want / 2
    assert prune.step_flops(1.0, 10.0, method="rigl", update_step=True) == 12.0
    assert prune.step_flops(1.0, 10.0, method="rigl") == 3.0
    assert prune.step_flops(1.0, 10.0, method="ste") == 21.0
    with pytest.raises(ValueError, match="no weight count for \\['head/kernel'\\]"):
        prune.forward_flops({p: 1 for p in list(sizes)[:3]}, uses)


def test_sparse_training_rows(tmp_path):
    overrides = {
        "model.channels": (8, 8, 8),
        "train.steps": 30,
        "train.log_every": 30,
        "sparse.methods": ("dense", "static", "rigl", "ste"),
        "sparse.sparsities": (0.9,),
        "sparse.frequency": 10,
    }
    kind, s = experiments.prepare(load_config(CONFIG, overrides=overrides))
    rows = {r["method"]: r for r in kind.run(s, str(tmp_path), progress=False)["rows"]}
    assert list(rows) == ["dense", "static", "rigl", "ste"]
    assert rows["dense"]["train_flops_vs_dense"] == 1.0 and rows["dense"]["sparsity"] == 0.0
    for m in ("static", "rigl", "ste"):
        assert rows[m]["sparsity"] == 0.9
        assert rows[m]["achieved_sparsity"] == pytest.approx(0.9, abs=2e-3), m
        assert 0.0 <= rows[m]["test_accuracy"] <= 1.0
    # Sparse steps cost f_S; RigL adds a dense weight gradient on its 3 update steps; STE
    # runs its whole backward pass dense.
    flops = {m: rows[m]["train_flops_vs_dense"] for m in rows}
    assert flops["static"] < flops["rigl"] < flops["ste"] < 1.0
    r = flops["static"]  # f_S / f_D
    np.testing.assert_allclose(flops["ste"], (r + 2) / 3, rtol=1e-9)
    # Updates at steps 0, 10, 20 (at 22 = 0.75 * 30 the cosine fraction is 0): 27 sparse steps.
    np.testing.assert_allclose(flops["rigl"], (27 * 3 * r + 3 * (2 * r + 1)) / 90, rtol=1e-9)
    assert os.path.exists(tmp_path / "accuracy_vs_flops.png")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("sparse.fraction", 1.0, "sparse.fraction"),
        ("sparse.fraction", 0.0, "sparse.fraction"),
        ("sparse.frequency", 0, "sparse.frequency"),
        ("sparse.methods", ("rigl", "snip"), "snip"),
    ],
)
def test_sparse_training_bad_settings(key, value, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        experiments.prepare(load_config(CONFIG, overrides={key: value}))
    assert "\n" not in str(info.value)
