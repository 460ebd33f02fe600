"""Sparse training on MNIST-1D: dense, gradual pruning, static, SET, RigL and STE.

    jaxopt-ft --config=configs/mnist1d_sparse_training.py --workdir=runs/mnist1d_sparse_training

PLACEHOLDER
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("sparse_training")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (128, 128, 128)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 1500
    config.train.batch_size = 100
    config.train.log_every = 500
    config.checkpoint.every_steps = 0
    config.sparse.exclude_first = True
    config.sparse.methods = ("dense", "gradual", "static", "set", "rigl", "ste")
    config.sparse.sparsities = (0.8, 0.9, 0.95)
    config.sparse.distribution = "erk"
    config.sparse.fraction = 0.3
    config.sparse.frequency = 100
    config.sparse.update_end_fraction = 0.75
    config.sparse.begin_fraction = 0.0
    config.sparse.end_fraction = 0.5
    return config
