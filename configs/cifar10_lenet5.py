"""The seed's LeNet-5 on CIFAR-10 (32x32x3), read from a TFDS data dir where it is prepared.

CIFAR-10 is not generated offline: prepare it once on a machine with network access
(`tfds build cifar10 --file_format=array_record --data_dir=DIR`) and copy DIR here, then

    jaxopt-ft --config=configs/cifar10_lenet5.py --workdir=runs/cifar10 \\
        --config.dataset.data_dir=DIR

Phases: `train` (`train.steps` = 20,000 steps of 128; Adam 1e-3, 500 warm-up steps, cosine).

Expected: test_accuracy about 0.60-0.65 after 20,000 steps (classic LeNet-5 territory; not in
the README's generated tables). Without the prepared data the command stops at once with a
message saying how to prepare it.
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("train")
    config.dataset.name = "cifar10"
    config.model.name = "lenet5"
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_steps = 500
    config.train.steps = 20000
    config.train.batch_size = 128
    config.checkpoint.every_steps = 2000
    return config
