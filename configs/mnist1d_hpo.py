"""Optuna search over the training recipe of the MNIST-1D paper's CNN, 30 trials of 1,500 steps.

    jaxopt-ft --config=configs/mnist1d_hpo.py --workdir=runs/mnist1d_hpo

TABLE
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("hpo")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.train.steps = 1500
    config.train.batch_size = 100
    config.train.log_every = 500
    config.train.label_smoothing = 0.1
    config.schedule.decay_rate = 0.1
    config.schedule.warmup_steps = 75  # 5 % of each trial, as in mnist1d_sweep
    config.checkpoint.every_steps = 0
    config.hpo.trials = 30
    config.hpo.eval_every = 250
    return config
