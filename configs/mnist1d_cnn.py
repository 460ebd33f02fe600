"""The MNIST-1D paper's CNN (5,210 params): Adam 1e-2, batch 96, 6,000 steps.

    jaxopt-ft --config=configs/mnist1d_cnn.py --workdir=runs/mnist1d_cnn
    # data parallel over every device (the batch, 96, divides by 1, 2, 4 or 8 of them):
    jaxopt-ft --config=configs/mnist1d_cnn.py --workdir=runs/cnn_dp --config.parallel.mode=sharding

Expected: test_accuracy 0.95-0.97 with params = 5210 (the paper reports 94 %), in about 20 s on
2 CPU cores. Seeds 0/1/2 gave 0.960 / 0.947 / 0.955 (`scripts/paper_table.sh`; with batch 100:
0.969 / 0.955 / 0.951). The paper's recipe alone overfits (train loss -> 1e-5): a constant rate
gave 0.944 / 0.933 / 0.928 and a cosine decay 0.931 / 0.935 / 0.925 (batch 100); cosine decay
plus label smoothing 0.1 is the default here. Over 200 steps, modes `sharding` and `pmap` end
with the test loss of mode `none` to 1e-4 (tests/test_parallel_cli.py); over all 6,000 steps
float reassociation drifts them apart (sharding 0.258 vs none 0.254 on 8 simulated devices).

`:arg` picks the width multiplier, e.g. `configs/mnist1d_cnn.py:2.56` for 64 channels.
"""

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    config = base_config()
    config.experiment = "train"
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
