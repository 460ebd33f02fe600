"""16 momentum-SGD configurations of the MNIST-1D paper's CNN trained as one vmapped population.

    jaxopt-ft --config=configs/mnist1d_population.py --workdir=runs/mnist1d_population

A 4 x 4 grid of peak learning rates (0.01 .. 0.3, log-spaced) and momenta (0.5 .. 0.95),
warmup_cosine over `train.steps` = 500 steps, label smoothing 0.1, the same batches for every
member, all 16 in one jitted, vmapped step (`jaxopt_ft.population`). Writes accuracy_vs_lr.png.

Measured (seed 0; 65 s for the 16 members, 74 s for the whole command, on a 2-core machine
shared with other jobs). Test accuracy after 500 steps:

    peak lr / momentum    0.5     0.65    0.8     0.95
    0.01                  0.239   0.261   0.315   0.495
    0.031                 0.355   0.395   0.507   0.733
    0.097                 0.552   0.647   0.752   0.894
    0.3                   0.793   0.865   0.914   0.716

500 steps favour a large effective step lr / (1 - momentum) up to about 1.5; at 0.3 x 0.95
(effective 6) training is unstable. `benchmarks/population.py` times the population against
training the members one after another.
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("population")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.optimizer.name = "momentum"
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_steps = 25
    config.train.steps = 500
    config.train.batch_size = 100
    config.train.label_smoothing = 0.1
    config.checkpoint.every_steps = 0
    config.population.size = 16
    config.population.draw = "grid"
    config.population.space = {
        "learning_rate": ("log", 0.01, 0.3),
        "momentum": ("uniform", 0.5, 0.95),
    }
    config.population.seeds = (0,)
    return config
