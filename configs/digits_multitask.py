"""Multi-task digits: LeNet-5 as a shared trunk on the 8x8 UCI digits, four tasks.

    jaxopt-ft --config=configs/digits_multitask.py --workdir=runs/digits_multitask

Tasks, all computed from the data: ``digit`` (10-way), ``parity`` (label % 2), ``large``
(label >= 5), and the regression task ``ink``: the mean pixel intensity of the image, i.e. how
much ink the writer put down. It is a real property of each image (stroke thickness and digit
size), only weakly tied to the digit (the class explains about 4 % of its variance), so it
tests whether a regression head helps or hurts the classifiers sharing the trunk. Its targets
are z-scored with the training split's statistics (an MSE of 1.0 = predicting the mean).

Rows: single_task, equal, uncertainty, dwa, gradnorm, pcgrad, alternating (add "static" to
multitask.rows to use multitask.static_weights). Each trains 600 Adam steps (cosine decay from
1e-3, batch 64). Measured: 104-157 s of CPU time on 2 cores shared with other jobs (LeNet-5's
2-D convolutions make the per-task backward passes of PCGrad and GradNorm slower here).

Expected (mean over seeds 0-2): single_task digit 0.975, parity 0.986, large 0.975, ink MSE
0.042; equal weights digit 0.957, parity 0.974, large 0.964, ink 0.057. Here one model per task
wins every task; uncertainty and GradNorm win back part of digit (0.966 / 0.962) and parity
(0.979 / 0.981) by moving weight off ink (ink MSE 0.068 / 0.089); DWA and PCGrad match equal;
alternating is worst. task_similarity: digit-parity 0.31, digit-large 0.25, parity-large 0.00,
ink-any <= 0.02.

`:arg` picks a comma-separated subset of the tasks, e.g. `configs/digits_multitask.py:digit,ink`.
"""

from jaxopt_ft.experiments.common import base_config
from jaxopt_ft.experiments.multitask import config_section

TASKS = {
    "digit": {"kind": "classification", "num_classes": 10, "loss": "cross_entropy"},
    "parity": {"kind": "classification", "num_classes": 2, "loss": "cross_entropy"},
    "large": {"kind": "classification", "num_classes": 2, "loss": "cross_entropy"},
    "ink": {"kind": "regression", "num_classes": 1, "loss": "mse"},
}


def get_config(arg=None):
    config = base_config()
    config.experiment = "multitask"
    config.dataset.name = "digits"
    config.model.name = "lenet5"
    config.model.channels = (6, 16)
    config.model.hidden = (120, 84)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "cosine"
    config.train.steps = 600
    config.train.batch_size = 64
    config.eval.batch_size = 500
    config.checkpoint.every_steps = 300
    config.multitask = config_section(TASKS, arg)
    return config
