"""Accuracy vs sparsity on MNIST-1D: four pruning methods from one dense 128-channel CNN.

    jaxopt-ft --config=configs/mnist1d_sparsity_sweep.py --workdir=runs/mnist1d_sparsity_sweep

The dense model and the pruning recipe are those of ``mnist1d_compress.py`` (2,000 dense
steps; conv1 left dense; cubic ramp over the first half of the fine-tuning, masks every 50
steps, Adam from 3e-3 with cosine decay), with 1,000 fine-tuning steps per run. Every run
prunes a copy of the same dense model and sees the same batches.

Expected test accuracy (seed 0, dense 0.963), also drawn in ``sparsity_accuracy.png``:

    method            0.5    0.75   0.9    0.95   0.98
    magnitude-layer   0.966  0.962  0.959  0.959  0.900
    magnitude-global  0.968  0.963  0.960  0.954  0.863
    random            0.933  0.912  0.749  0.552  0.284
    saliency          0.966  0.967  0.965  0.963  0.895

Magnitude and saliency keep dense accuracy to 95 % sparsity; random scores lose 3 points at
50 % and collapse beyond 75 %. The 21 phases took 265 s wall (210 s CPU) on 2 CPU cores
shared with other jobs; with 500 fine-tuning steps per run they take about 60 % of that but
lose more at 0.95 / 0.98 (magnitude-layer 0.942 / 0.700, saliency 0.930 / 0.796).
"""

import ml_collections

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.experiment = "sparsity_sweep"
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (128, 128, 128)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 2000
    config.train.batch_size = 100
    config.train.log_every = 500
    config.checkpoint.every_steps = 0
    config.prune = ml_collections.ConfigDict(
        {
            "rules": (),
            "exclude_first": True,
            "exclude_last": False,
            "steps": 1000,
            "begin_fraction": 0.0,
            "end_fraction": 0.5,
            "frequency": 50,
            "learning_rate": 3e-3,
            "schedule": "cosine",
        }
    )
    config.sweep = ml_collections.ConfigDict(
        {
            # Among magnitude-layer, magnitude-global, magnitude-erk, random, saliency.
            "methods": ("magnitude-layer", "magnitude-global", "random", "saliency"),
            "sparsities": (0.5, 0.75, 0.9, 0.95, 0.98),
        }
    )
    return config
