"""Test metrics of a multi-task model: accuracy per classification task, MSE per regression task."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_ft import train
from jaxopt_ft.multitask.model import check_heads
from jaxopt_ft.multitask.tasks import Task, check_targets, task_score


def evaluate(
    state: train.TrainState,
    tasks: tuple[Task, ...],
    x: np.ndarray,
    targets: Mapping[str, np.ndarray],
    *,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Test metrics per task: ``<task>_accuracy`` (fraction) or ``<task>_mse``.

    Raises:
        ValueError: when a task has no targets or the model has no head for it.
    """
    check_heads(state.params, tasks)
    check_targets(targets, tasks)
    n = len(x)
    if n == 0:
        raise ValueError("Evaluation saw no examples: the evaluation split is empty.")

    @jax.jit
    def sums(variables, xb, tb, mask):
        outputs = state.apply_fn(variables, xb, train=False)
        return [jnp.sum(task_score(t, outputs[t.name], tb[t.name]) * mask) for t in tasks]

    totals = np.zeros(len(tasks))
    variables = state.variables()
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        xb = np.concatenate([x[start:stop], np.zeros((pad, *x.shape[1:]), x.dtype)])
        tb = {
            t.name: np.concatenate(
                [targets[t.name][start:stop], np.zeros((pad,), targets[t.name].dtype)]
            )
            for t in tasks
        }
        mask = np.concatenate([np.ones(stop - start), np.zeros(pad)]).astype(np.float32)
        totals += np.asarray(jax.device_get(sums(variables, xb, tb, mask)), np.float64)
    return {t.metric: float(totals[i] / n) for i, t in enumerate(tasks)}
