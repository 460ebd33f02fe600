"""Accuracy vs bits on MNIST-1D: weights-only PTQ, weights + activations PTQ, and QAT.

    jaxopt-ft --config=configs/mnist1d_bits_sweep.py --workdir=runs/mnist1d_bits_sweep

One 64-channel CNN (113,192 bytes in float32) is quantized at each width of `sweep.bits` by
each method of `sweep.methods`; the first and last layers stay at 8 bits throughout
(`quant.first_last_bits`).

Phases: `dense` (`train.steps` = 3,000), then `qat@<b>` for each width (`quant.qat_steps` =
1,000 steps at `quant.learning_rate` = 3e-3); the PTQ rows train nothing.

Expected (seed 0, the README's table from `make results`): dense 0.966; test accuracy

    bits   ptq_weights   ptq      qat      size_bytes (compression)
    2      0.1240        0.1070   0.7600   17424 (6.496)
    3      0.8660        0.7400   0.9390   17424 (6.496)
    4      0.9530        0.9400   0.9470   17424 (6.496)
    6      0.9630        0.9600   0.9630   29712 (3.81; 5-8 bits are stored in int8)
    8      0.9620        0.9610   0.9630   29712 (3.81)

in about 2 minutes on 2 busy CPU cores (77 s of CPU time; timed with the earlier table in
docs/ablations.md).

How the defaults were chosen: docs/ablations.md#mnist1d_bits_sweep
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("bits_sweep")
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
    config.quant.first_last_bits = 8  # first and last layer's width in every run; 0 = like the rest
    config.quant.qat_steps = 1000
    config.quant.learning_rate = 0.003
    config.quant.calibration_batches = 10
    config.quant.observer = "minmax"
    config.sweep.methods = ("ptq_weights", "ptq", "qat")
    config.sweep.bits = (2, 3, 4, 6, 8)
    return config
