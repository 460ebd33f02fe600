"""The ``hpo`` report: the trials table, the best trial retrained and tested, Optuna's plots."""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna

from jaxopt_ft import hpo, report
from jaxopt_ft.experiments import hpo as hpo_exp


def lr_batch_slope(s, study: optuna.Study) -> dict:
    """Which learning-rate scaling rule the trials support, when batch size was searched.

    Fits ``log(effective lr) = a + slope * log(batch size)`` over the best half of the
    completed trials: a slope near 1 supports linear scaling, near 0.5 square-root scaling.
    """
    if "batch_size" not in s.hpo.space:
        return {}
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    done = sorted(done, key=lambda t: -t.value)[: max(3, len(done) // 2)]
    points = []
    for t in done:
        ts, _ = hpo_exp.trial_settings(s, t.params)
        points.append((math.log(ts.train.batch_size), math.log(ts.optimizer.learning_rate)))
    xs = np.array(points)
    if len(xs) < 3 or np.ptp(xs[:, 0]) == 0:
        return {"lr_batch_slope": None, "lr_scaling_supported": "too few batch sizes"}
    slope = float(np.polyfit(xs[:, 0], xs[:, 1], 1)[0])
    rule = min((("linear", 1.0), ("sqrt", 0.5), ("none", 0.0)), key=lambda r: abs(r[1] - slope))
    return {"lr_batch_slope": slope, "lr_scaling_supported": rule[0]}


def _plots(study: optuna.Study, workdir: str) -> list[str]:
    from optuna.visualization import matplotlib as ovm

    plt = report.pyplot()
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    makers = {"optimization_history.png": ovm.plot_optimization_history}
    if len(done) >= 2 and any(len(t.params) for t in done):
        makers["param_importances.png"] = ovm.plot_param_importances
        makers["parallel_coordinate.png"] = ovm.plot_parallel_coordinate
    out = []
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            ax = make(study)
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 4.5)
        out.append(report.save_plot(fig, workdir, name, legend=False))
        plt.close(fig)
    return out


def finish(s, study: optuna.Study, workdir: str, *, wall_s: float) -> dict:
    """The report dict of the study as it stands (every worker writes the same)."""
    rows = hpo.trial_rows(study)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    extra: dict = {
        "trials": len(rows),
        "wall_s": wall_s,
        "storage": hpo_exp.storage_url(s, workdir),
    }
    extra["states"] = {st: sum(r["state"] == st for r in rows) for st in {r["state"] for r in rows}}
    if done:
        best = study.best_trial
        extra["best_trial"] = best.number
        extra["best_val_accuracy"] = best.value
        extra["best_params"] = best.params
        extra["best_overrides"] = hpo_exp.overrides(s, best.params)
        if s.hpo.retrain:
            tested = hpo_exp.retrain(s, best.params)
            extra["best_test_accuracy"] = tested["test_accuracy"]
            extra["best_test_loss"] = tested["test_loss"]
    extra.update(lr_batch_slope(s, study))
    return {
        "experiment": s.experiment,
        "dataset": s.dataset.name,
        "model": s.model.name,
        "rows": rows,
        "plots": _plots(study, workdir) if done else [],
        **extra,
    }
