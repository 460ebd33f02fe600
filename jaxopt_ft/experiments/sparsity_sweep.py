"""Experiment ``sparsity_sweep``: test accuracy vs sparsity for several pruning methods.

One dense model is trained (phase ``dense``, as in ``compress``); then every method of
``sweep.methods`` prunes a copy of it to every sparsity of ``sweep.sparsities`` with the same
gradual schedule and fine-tuning as ``compress`` (the ``prune`` section: steps, fractions,
frequency, learning rate, rules), each in its own resumable phase ``<method>@<sparsity>``.
All runs see the same batches, so they differ only in which weights they remove.

Methods (scorer, scope, per-layer distribution):

- ``magnitude-layer``: ``|w|``, every prunable layer to the same sparsity;
- ``magnitude-global``: ``|w|``, one threshold across layers;
- ``magnitude-erk``: ``|w|``, per-layer targets from the Erdős–Rényi-Kernel rule;
- ``random``: uniform random scores, every layer to the same sparsity;
- ``saliency``: SNIP's ``|w * g|`` from the gradient of the batch at each mask update, one
  threshold across layers (as SNIP ranks connections globally).

Rows: ``name`` (``<method>@<sparsity>``), ``method``, ``target_sparsity``, ``sparsity`` (the
achieved fraction of zero prunable weights: ``round(target * n) / n`` as `torch.nn.utils.prune`
counts, per layer or over all layers), ``test_accuracy``. The
report also holds ``dense_test_accuracy`` and ``sparsity_accuracy.png`` (one line per method,
the dense accuracy dashed).
"""

from __future__ import annotations

from typing import Any

from jaxopt_ft import report
from jaxopt_ft.experiments import common, pruning
from jaxopt_ft.experiments.settings import SparsitySweepSettings as Settings

METHODS: dict[str, tuple[str, str, str]] = {
    "magnitude-layer": ("magnitude", "layer", "uniform"),
    "magnitude-global": ("magnitude", "global", "uniform"),
    "magnitude-erk": ("magnitude", "layer", "erk"),
    "random": ("random", "layer", "uniform"),
    "saliency": ("saliency", "global", "uniform"),
}


def method_target(method: str, sparsity: float) -> dict[str, Any]:
    """The ``sparsity``/``scorer``/``scope``/``distribution`` keywords of one sweep run."""
    scorer, scope, distribution = METHODS[method]
    return {"sparsity": sparsity, "scorer": scorer, "scope": scope, "distribution": distribution}


def validate(s: Settings) -> None:
    train_ds = common.validate_common(s)
    model = common.build_model(s, num_classes=train_ds.num_classes)
    params = pruning.abstract_params(model, train_ds.x)
    for method in s.sweep.methods:
        target = method_target(method, max(s.sweep.sparsities))
        key = common.seed_key(s)
        pruning.pruning_optimizer(s, model, params, steps=s.prune.steps, key=key, **target)


def plot(workdir: str, rows: list[dict[str, Any]], dense_accuracy: float) -> str:
    """Test accuracy vs target sparsity, one line per method; returns the file name."""
    fig, ax = report.accuracy_by_method(
        rows, x="target_sparsity", dense_accuracy=dense_accuracy, dense_label="dense"
    )
    targets = sorted({r["target_sparsity"] for r in rows})
    if all(0.0 < s < 1.0 for s in targets):
        ax.set_xscale("logit")  # spreads 0.9, 0.95, 0.98 apart
        ax.set_xticks(targets, [f"{s:g}" for s in targets])
        ax.minorticks_off()
    ax.set_xlabel("sparsity of the prunable weights")
    return report.save_plot(fig, workdir, "sparsity_accuracy.png")


def run(s: Settings, workdir: str, *, progress: bool = True) -> dict:
    timer = common.Timer()
    ctx = pruning.make_context(s, workdir, progress=progress)
    dense, dense_row = pruning.dense_phase(ctx)
    rows = []
    for method in s.sweep.methods:
        for sparsity in s.sweep.sparsities:
            name = f"{method}@{sparsity:g}"
            state, _ = pruning.prune_from(
                ctx, dense, phase=name, steps=s.prune.steps, key=ctx.keys["prune"],
                **method_target(method, sparsity),
            )  # fmt: skip
            rows.append(
                {
                    "name": name,
                    "method": method,
                    "target_sparsity": sparsity,
                    "sparsity": pruning.counts(ctx, state.params)["sparsity"],
                    "test_accuracy": pruning.accuracy(ctx, ctx.forward, state.variables()),
                }
            )
    return common.report(
        s,
        rows,
        dense_test_accuracy=dense_row["test_accuracy"],
        prunable_params=ctx.prunable_params,
        plots=[plot(workdir, rows, dense_row["test_accuracy"])],
        wall_s=timer(),
    )
