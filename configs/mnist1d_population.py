"""16 momentum-SGD configurations of the MNIST-1D paper's CNN trained as one vmapped population.

    jaxopt-ft --config=configs/mnist1d_population.py --workdir=runs/mnist1d_population

A 4 x 4 grid of peak learning rates (0.01 .. 0.3, log-spaced) and momenta (0.5 .. 0.95),
warmup_cosine over `train.steps` = 500 steps, label smoothing 0.1, the same batches for every
member, all 16 in one jitted, vmapped step (`jaxopt_ft.population`). Writes accuracy_vs_lr.png.

TABLE
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
