"""Accuracy vs sparsity on MNIST-1D: four pruning methods from one dense 128-channel CNN.

    jaxopt-ft --config=configs/mnist1d_sparsity_sweep.py --workdir=runs/mnist1d_sparsity_sweep

The dense model and the pruning recipe are those of `mnist1d_compress.py` (conv1 left dense;
cubic ramp over the first half of the fine-tuning, masks every 50 steps, Adam from 3e-3 with
cosine decay). Every run prunes a copy of the same dense model and sees the same batches.

Phases: `dense` (`train.steps` = 2,000), then `<method>@<sparsity>` for each of
`sweep.methods` x `sweep.sparsities` (4 x 5), each `prune.steps` (1,000) fine-tuning steps.

Expected test accuracy (seed 0, the README's table from `make results`; dense 0.968), also
drawn in `sparsity_accuracy.png`:

    method            0.5     0.75    0.9     0.95    0.98
    magnitude-layer   0.9700  0.9720  0.9650  0.9540  0.9010
    magnitude-global  0.9700  0.9630  0.9610  0.9550  0.8520
    random            0.9450  0.9000  0.7540  0.5880  0.2770
    saliency          0.9660  0.9680  0.9690  0.9590  0.8990

The 21 phases took 265 s wall (210 s CPU) on 2 CPU cores shared with other jobs (timed with
the earlier table in docs/ablations.md).

How the defaults were chosen: docs/ablations.md#mnist1d_sparsity_sweep
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("sparsity_sweep")
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
    config.prune.rules = ()
    config.prune.exclude_first = True
    config.prune.exclude_last = False
    config.prune.steps = 1000
    config.prune.begin_fraction = 0.0
    config.prune.end_fraction = 0.5
    config.prune.frequency = 50
    config.prune.learning_rate = 0.003
    config.prune.schedule = "cosine"
    # Among magnitude-layer, magnitude-global, magnitude-erk, random, saliency.
    config.sweep.methods = ("magnitude-layer", "magnitude-global", "random", "saliency")
    config.sweep.sparsities = (0.5, 0.75, 0.9, 0.95, 0.98)
    return config
