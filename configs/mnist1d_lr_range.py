"""Learning-rate range test of momentum SGD on the MNIST-1D paper's CNN (Smith, 2017).

    jaxopt-ft --config=configs/mnist1d_lr_range.py --workdir=runs/mnist1d_lr_range

300 steps at batch 100 with the rate growing from 1e-4 to 10 (momentum 0.9, label smoothing
0.1). Measured (seed 0, 31 s of wall time on a loaded 2-core machine):

    suggested (min / 10)   steepest   smoothed-loss minimum   steps   stopped early
    0.052                  0.44       0.52                    300     no (the loss plateaus at
                                                                      ln 10 instead of blowing up)

configs/mnist1d_sweep.py found 0.1 the best constant rate for momentum SGD here: the suggestion
is within a factor of 2 of it. Writes lr_range.png.
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
