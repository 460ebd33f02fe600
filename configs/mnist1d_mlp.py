"""The MNIST-1D paper's MLP (40-100-100-10, 15,210 params): Adam 1e-2, batch 100, 6,000 steps.

    jaxopt-ft --config=configs/mnist1d_mlp.py --workdir=runs/mnist1d_mlp

Phases: `train` (`train.steps` = 6,000 steps).

Expected: test_accuracy about 0.65-0.70 (the paper reports 68 %), params = 15210. Over seeds
0 / 1 / 2 (`scripts/paper_table.sh`, the README's paper table):

    model  params  test accuracy (mean +- std, 3 seeds)  paper
    mlp    15,210  66.3 +- 1.5 %                          68 %
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("train")
    config.dataset.name = "mnist1d"
    config.model.name = "mlp"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 6000
    config.train.batch_size = 100
    return config
