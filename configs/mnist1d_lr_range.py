"""Learning-rate range test of momentum SGD on the MNIST-1D paper's CNN (Smith, 2017).

    jaxopt-ft --config=configs/mnist1d_lr_range.py --workdir=runs/mnist1d_lr_range

TABLE
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("lr_range")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.optimizer.name = "momentum"
    config.train.batch_size = 100
    config.train.label_smoothing = 0.1
    config.checkpoint.every_steps = 0
    config.lr_range.min_lr = 1e-4
    config.lr_range.max_lr = 10.0
    config.lr_range.steps = 300
    return config
