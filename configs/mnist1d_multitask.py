"""Multi-task MNIST-1D: the paper's CNN as a shared trunk, four tasks, every training strategy.

    jaxopt-ft --config=configs/mnist1d_multitask.py --workdir=runs/mnist1d_multitask
    jaxopt-ft --config=configs/mnist1d_multitask.py:digit,slope --workdir=runs/mt_digit_slope

`:arg` picks a comma-separated subset of the tasks: `digit` (10-way), `parity` (label % 2),
`large` (label >= 5) and the regression task `slope` (the signal's least-squares slope).

Phases: one per row of `multitask.rows` (`single_task` trains `single_task_<task>` per task),
each `train.steps` (1,500) Adam steps, cosine decay from 1e-2, batch 100; keep
`multitask.similarity_every` <= `train.steps`. Add "static" to `multitask.rows` to train
with `multitask.static_weights`.

Expected, mean +- std over seeds 0-2 (`--config.seed=N`, N = 0, 1, 2; delta_m is LibMTL's average
relative change against single_task in percent, dominated here by slope's tiny single-task MSE;
mmoe has 3 expert trunks, 14,232 params against 5,840):

    row          digit_accuracy   parity_accuracy  large_accuracy   slope_mse        delta_m
    single_task  0.9113 +- 0.0076 0.9603 +- 0.0160 0.9373 +- 0.0101 0.0002 +- 0.0000
    equal        0.9357 +- 0.0122 0.9467 +- 0.0032 0.9493 +- 0.0006 0.0090 +- 0.0011 -943 +- 168
    uncertainty  0.9377 +- 0.0104 0.9657 +- 0.0038 0.9487 +- 0.0021 0.0023 +- 0.0001 -225 +- 52
    dwa          0.9317 +- 0.0102 0.9507 +- 0.0049 0.9400 +- 0.0095 0.0094 +- 0.0015 -989 +- 270
    gradnorm     0.9260 +- 0.0080 0.9510 +- 0.0066 0.9457 +- 0.0038 0.0120 +- 0.0019 -1245 +- 112
    pcgrad       0.9350 +- 0.0147 0.9530 +- 0.0056 0.9443 +- 0.0106 0.0070 +- 0.0018 -715 +- 68
    alternating  0.8967 +- 0.0200 0.9217 +- 0.0146 0.9337 +- 0.0175 0.0191 +- 0.0015 -2062 +- 513
    mgda         0.6893 +- 0.0202 0.8233 +- 0.0192 0.8303 +- 0.0185 0.0004 +- 0.0000 -30 +- 11
    mgda_ub      0.7740 +- 0.0235 0.9123 +- 0.0246 0.9020 +- 0.0069 0.0015 +- 0.0002 -143 +- 20
    cagrad       0.9267 +- 0.0035 0.9550 +- 0.0036 0.9390 +- 0.0066 0.0014 +- 0.0002 -127 +- 18
    nash_mtl     0.9383 +- 0.0025 0.9590 +- 0.0035 0.9490 +- 0.0105 0.0012 +- 0.0001 -101 +- 14
    imtl         0.9403 +- 0.0045 0.9647 +- 0.0031 0.9567 +- 0.0021 0.0009 +- 0.0003 -67 +- 13
    gradvac      0.9370 +- 0.0017 0.9520 +- 0.0010 0.9453 +- 0.0021 0.0080 +- 0.0014 -824 +- 105
    graddrop     0.9303 +- 0.0145 0.9540 +- 0.0111 0.9463 +- 0.0035 0.0091 +- 0.0017 -949 +- 223
    rlw          0.9290 +- 0.0092 0.9463 +- 0.0106 0.9430 +- 0.0046 0.0124 +- 0.0013 -1310 +- 215
    aligned_mtl  0.8973 +- 0.0145 0.9397 +- 0.0081 0.9210 +- 0.0104 0.0014 +- 0.0003 -123 +- 26
    db_mtl       0.5970 +- 0.0833 0.7830 +- 0.0131 0.7627 +- 0.0598 0.0207 +- 0.0043 -2243 +- 688
    mmoe         0.9177 +- 0.0098 0.9420 +- 0.0010 0.9270 +- 0.0044 0.0044 +- 0.0006 -453 +- 99

task_similarity (seed 0): digit-parity 0.3011, digit-large 0.2822, parity-large 0.1754,
slope-any <= 0.0045. Measured: about 35 min wall per seed for all 18 rows on 2 cores shared with
other jobs (the gradient balancers take 4-5 equal-weight steps each).

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
