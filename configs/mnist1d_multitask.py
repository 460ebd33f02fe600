"""Multi-task MNIST-1D: the paper's CNN as a shared trunk, four tasks, seven training strategies.

    jaxopt-ft --config=configs/mnist1d_multitask.py --workdir=runs/mnist1d_multitask

Tasks, all computed from the data: ``digit`` (10-way), ``parity`` (label % 2), ``large``
(label >= 5), and the regression task ``slope``: the least-squares slope of the 40-sample signal
against its position. The MNIST-1D generator tilts every signal by a random shear, so the slope
measures that nuisance transform; the digit explains only about 2 % of its variance. It is a
task the classifiers must learn to ignore, which makes it the interesting partner for the
gradient-similarity matrix. Its targets are z-scored with the training split's statistics, so
an MSE of 1.0 is what predicting the mean scores.

Rows: single_task (one model per task), equal, uncertainty, dwa, gradnorm, pcgrad, alternating
(add "static" to multitask.rows to train with multitask.static_weights). Each trains 1,500 Adam
steps (cosine decay from 1e-2, batch 100). Measured: 62-92 s of CPU time, 2.3-3.2 min wall on
2 cores shared with other jobs.

Expected (mean over seeds 0-2): single_task digit 0.913, parity 0.962, large 0.937, slope MSE
0.0002 (the slope is linear in the input, so a dedicated model nails it); equal weights digit
0.937, parity 0.943, large 0.945, slope 0.0096. The shared trunk helps digit and large, costs
parity and slope; uncertainty weighting recovers parity (0.964) and slope (0.0023); DWA stays
at equal weights; GradNorm down-weights digit (0.921); alternating is worst on every task.
task_similarity: digit-parity 0.31, digit-large 0.31, parity-large 0.16, slope-any <= 0.01.

`:arg` picks a comma-separated subset of the tasks, e.g. `configs/mnist1d_multitask.py:digit,slope`.
"""

from jaxopt_ft.experiments.common import base_config
from jaxopt_ft.experiments.multitask import config_section

TASKS = {
    "digit": {"kind": "classification", "num_classes": 10, "loss": "cross_entropy"},
    "parity": {"kind": "classification", "num_classes": 2, "loss": "cross_entropy"},
    "large": {"kind": "classification", "num_classes": 2, "loss": "cross_entropy"},
    "slope": {"kind": "regression", "num_classes": 1, "loss": "mse"},
}


def get_config(arg=None):
    config = base_config()
    config.experiment = "multitask"
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (25, 25, 25)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 1500
    config.train.batch_size = 100
    config.checkpoint.every_steps = 500
    config.multitask = config_section(TASKS, arg)
    return config
