"""The MNIST-1D paper's logistic regression (410 params): Adam 1e-2, batch 100, 6,000 steps.

    jaxopt-ft --config=configs/mnist1d_logistic.py --workdir=runs/mnist1d_logistic

Phases: `train` (`train.steps` = 6,000 steps).

Expected: test_accuracy about 0.30-0.33 (the paper reports 32 %), params = 410. Over seeds
0 / 1 / 2 (`scripts/paper_table.sh`, the README's paper table):

    model     params  test accuracy (mean +- std, 3 seeds)  paper
    logistic  410     33.0 +- 0.2 %                          32 %
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("train")
    config.dataset.name = "mnist1d"
    config.model.name = "logistic"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 6000
    config.train.batch_size = 100
    return config
