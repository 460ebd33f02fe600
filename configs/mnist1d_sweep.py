"""Optimizer x schedule sweep and a batch-size sweep: the MNIST-1D paper's CNN, 1,500 steps.

    jaxopt-ft --config=configs/mnist1d_sweep.py --workdir=runs/mnist1d_sweep

Phases: `<optimizer>_<schedule>` for each of `sweep.optimizers` x `sweep.schedules` (7 x 4,
batch 100, `train.steps` = 1,500 each, rates from `sweep.learning_rates`), then `batch_<size>`
for each of `sweep.batch_sizes` (momentum SGD, warmup_cosine, the same 37.5 epochs:
`train.steps` x `train.batch_size` / size steps, learning rate scaled linearly with the batch
size). Shorter `sweep.*` lists or fewer `train.steps` shorten it. Writes loss_curves.png and
accuracy_bars.png.

Expected test accuracy (seed 0; the README's table from `make results` has the same values),
152 s of CPU time (4 min 19 s of wall time on a shared 2-core machine):

    optimizer (lr)     constant  exponential  inverse_time  warmup_cosine
    sgd (1.0)           0.957      0.926        0.922         0.945
    momentum (0.1)      0.966      0.945        0.925         0.943
    nesterov (0.1)      0.958      0.934        0.923         0.955
    adagrad (0.3)       0.941      0.933        0.905         0.949
    rmsprop (0.01)      0.929      0.953        0.947         0.954
    adam (0.01)         0.963      0.947        0.925         0.948
    adamw (0.01)        0.965      0.951        0.926         0.952

    batch size (lr)    25 (0.025)  50 (0.05)  100 (0.1)  200 (0.2)  400 (0.4)  800 (0.8)
    momentum            0.965      0.952      0.943      0.945      0.948      0.154

Single runs: gaps under ~3 points between rows are noise.

How the defaults were chosen: docs/ablations.md#mnist1d_sweep
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("sweep")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.train.steps = 1500
    config.train.batch_size = 100
    config.train.log_every = 50
    config.train.label_smoothing = 0.1
    # A diverging combination should show up as a bad row, not end the sweep.
    config.train.nan_policy = "skip"
    # exponential and inverse_time end at 10 % of the peak (1 % starves inverse_time: it is at
    # 1/11 of the peak after a tenth of the run, and 1,500 steps leave the CNN under-trained).
    config.schedule.decay_rate = 0.1
    config.checkpoint.every_steps = 0
    config.sweep.optimizers = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
    config.sweep.schedules = ("constant", "exponential", "inverse_time", "warmup_cosine")
    # Peak learning rate per optimizer at batch 100 (the docstring has the search).
    config.sweep.learning_rates = {
        "sgd": 1.0,
        "momentum": 0.1,
        "nesterov": 0.1,
        "adagrad": 0.3,
        "rmsprop": 0.01,
        "adam": 0.01,
        "adamw": 0.01,
    }
    config.sweep.warmup_fraction = 0.05
    config.sweep.batch_sizes = (25, 50, 100, 200, 400, 800)
    config.sweep.batch_optimizer = "momentum"
    config.sweep.batch_schedule = "warmup_cosine"
    return config
