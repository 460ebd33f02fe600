"""Accuracy vs bits on MNIST-1D: weights-only PTQ, weights + activations PTQ, and QAT.

    jaxopt-ft --config=configs/mnist1d_bits_sweep.py --workdir=runs/mnist1d_bits_sweep

One 64-channel CNN (113,192 bytes in float32) is trained for 3,000 steps, then quantized at
2, 3, 4, 6 and 8 bits by each method; the first and last layers stay at 8 bits throughout.
QAT fine-tunes 1,000 steps per width at 3e-3 (at 1e-3 for 300 steps, 2 bits reached 0.31).

Expected (seed 0): dense 0.960; test accuracy

    bits   ptq_weights   ptq     qat     size_bytes
    2      0.128         0.110   0.725   17,424 (6.5x)
    3      0.864         0.774   0.943   17,424
    4      0.945         0.941   0.956   17,424
    6      0.959         0.962   0.962   29,712 (3.8x; 5-8 bits are stored in int8)
    8      0.962         0.962   0.962   29,712

in about 2 minutes on 2 busy CPU cores (77 s of CPU time).
"""

import ml_collections

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.experiment = "bits_sweep"
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (64, 64, 64)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 3000
    config.train.batch_size = 100
    config.train.log_every = 500
    config.checkpoint.every_steps = 0
    config.quant = ml_collections.ConfigDict(
        {
            "first_last_bits": 8,  # first and last layer's width in every run; 0 = like the rest
            "qat_steps": 1000,
            "learning_rate": 3e-3,
            "calibration_batches": 10,
            "observer": "minmax",
        }
    )
    config.sweep = ml_collections.ConfigDict(
        {"methods": ("ptq_weights", "ptq", "qat"), "bits": (2, 3, 4, 6, 8)}
    )
    return config
