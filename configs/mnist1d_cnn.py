"""The MNIST-1D paper's CNN (5,210 params): Adam 1e-2, batch 96, 6,000 steps.

    jaxopt-ft --config=configs/mnist1d_cnn.py --workdir=runs/mnist1d_cnn
    # data parallel over every device (the batch, 96, divides by 1, 2, 4 or 8 of them):
    jaxopt-ft --config=configs/mnist1d_cnn.py --workdir=runs/cnn_dp --config.parallel.mode=sharding

`:arg` picks the width multiplier, e.g. `configs/mnist1d_cnn.py:2.56` for 64 channels.

Phases: `train` (`train.steps` = 6,000 steps; cosine decay, label smoothing 0.1).

Expected, in about 20 s on 2 CPU cores (seeds 0 / 1 / 2 from `scripts/paper_table.sh`, whose
mean is the README's paper table; the paper reports 94 %):

    row    test_accuracy (seeds 0 / 1 / 2)  mean +- std    params
    dense  0.960 / 0.947 / 0.955            95.4 +- 0.7 %  5210

Seed 0 in the README's training table (`make results`): test_loss 0.2662, test_accuracy
0.9600, final_train_loss 0.5305.

How the defaults were chosen: docs/ablations.md#mnist1d_cnn
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    config = base_config("train")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.width_mult = float(arg) if arg else 1.0
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 6000
    config.train.batch_size = 96  # divides by 1, 2, 4, 8 devices
    config.checkpoint.every_steps = 1000
    return config
