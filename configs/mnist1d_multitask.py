"""Multi-task MNIST-1D: the paper's CNN as a shared trunk, four tasks, seven training strategies.

    jaxopt-ft --config=configs/mnist1d_multitask.py --workdir=runs/mnist1d_multitask
    jaxopt-ft --config=configs/mnist1d_multitask.py:digit,slope --workdir=runs/mt_digit_slope

`:arg` picks a comma-separated subset of the tasks: `digit` (10-way), `parity` (label % 2),
`large` (label >= 5) and the regression task `slope` (the signal's least-squares slope).

Phases: one per row of `multitask.rows` (`single_task` trains `single_task_<task>` per task),
each `train.steps` (1,500) Adam steps, cosine decay from 1e-2, batch 100; keep
`multitask.similarity_every` <= `train.steps`. Add "static" to `multitask.rows` to train
with `multitask.static_weights`.

Expected, mean +- std over seeds 0-2 (README: `make results` and `scripts/more_seeds.sh
mnist1d_multitask`; the README lists each seed's value too):

    row          digit_accuracy    parity_accuracy   large_accuracy    slope_mse
    single_task  0.9113 +- 0.0076  0.9603 +- 0.0160  0.9373 +- 0.0101  0.0002 +- 0.0000
    equal        0.9357 +- 0.0122  0.9467 +- 0.0032  0.9493 +- 0.0006  0.0090 +- 0.0011
    uncertainty  0.9377 +- 0.0104  0.9657 +- 0.0038  0.9487 +- 0.0021  0.0023 +- 0.0001
    dwa          0.9317 +- 0.0102  0.9507 +- 0.0049  0.9400 +- 0.0095  0.0094 +- 0.0015
    gradnorm     0.9260 +- 0.0080  0.9510 +- 0.0066  0.9457 +- 0.0038  0.0120 +- 0.0019
    pcgrad       0.9330 +- 0.0075  0.9477 +- 0.0080  0.9437 +- 0.0075  0.0074 +- 0.0024
    alternating  0.9010 +- 0.0155  0.9230 +- 0.0128  0.9310 +- 0.0242  0.0209 +- 0.0033

task_similarity (seed 0): digit-parity 0.3011, digit-large 0.2822, parity-large 0.1754,
slope-any <= 0.0045. Measured: 62-92 s of CPU time, 2.3-3.2 min wall on 2 cores shared with
other jobs.

The tasks and a reading of the results: docs/ablations.md#mnist1d_multitask
"""

from jaxopt_ft.experiments.settings import base_config, select_tasks

TASKS = {
    "digit": {"kind": "classification", "num_classes": 10, "loss": "cross_entropy"},
    "parity": {"kind": "classification", "num_classes": 2, "loss": "cross_entropy"},
    "large": {"kind": "classification", "num_classes": 2, "loss": "cross_entropy"},
    "slope": {"kind": "regression", "num_classes": 1, "loss": "mse"},
}


ROWS = (
    "single_task",
    "equal",
    "uncertainty",
    "dwa",
    "gradnorm",
    "pcgrad",
    "alternating",
    "mgda",
    "mgda_ub",
    "cagrad",
    "nash_mtl",
    "imtl",
    "gradvac",
    "graddrop",
    "rlw",
    "aligned_mtl",
    "db_mtl",
    "mmoe",
)


def get_config(arg=None):
    config = base_config("multitask")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (25, 25, 25)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 1500
    config.train.batch_size = 100
    config.checkpoint.every_steps = 500
    config.multitask.rows = ROWS
    select_tasks(config, TASKS, arg)
    return config
