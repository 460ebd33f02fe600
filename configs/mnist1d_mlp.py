"""The MNIST-1D paper's MLP (40-100-100-10, 15,210 params): Adam 1e-2, batch 100, 6,000 steps.

    jaxopt-ft --config=configs/mnist1d_mlp.py --workdir=runs/mnist1d_mlp

Expected: test_accuracy about 0.65-0.70 (the paper reports 68 %), params = 15210.
"""

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.dataset.name = "mnist1d"
    config.model.name = "mlp"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 6000
    config.train.batch_size = 100
    return config
