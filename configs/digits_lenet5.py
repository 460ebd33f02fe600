"""The seed's LeNet-5 on scikit-learn's 8x8 UCI digits: Adam 1e-3, batch 64, 3,000 steps.

    jaxopt-ft --config=configs/digits_lenet5.py --workdir=runs/digits_lenet5
    # shorter (the README's example):
    jaxopt-ft --config=configs/digits_lenet5.py --workdir=runs/digits --config.train.steps=500

Phases: `train` (`train.steps` = 3,000 steps).

Expected: test_accuracy about 0.97-0.99 in well under a minute on 2 CPU cores (not in the
README's generated tables).
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("train")
    config.dataset.name = "digits"
    config.model.name = "lenet5"
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "cosine"
    config.train.steps = 3000
    config.train.batch_size = 64
    config.eval.batch_size = 500
    return config
