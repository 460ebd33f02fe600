"""Transfer on MNIST-1D: pretrain a 64-channel CNN on classes 0-4, adapt to 5-9 from 20 labels each.

    jaxopt-ft --config=configs/mnist1d_transfer.py --workdir=runs/mnist1d_transfer

Phases: `pretrain` (`train.steps` = 1,000 Adam steps of 100 on every training example of
classes 0-4), then `<mode>_seed<s>` for each of `transfer.modes` x `transfer.seeds` (0-2),
each `transfer.steps` (200) AdamW steps of 50 at 3e-3 (scratch 1e-2) on 20 labelled examples
per class (`features` trains only the head, on cached features). Each seed draws its own 100
labels and new head; every mode is scored on all test examples of classes 5-9.

Expected (the README's table from `make results`; seeds 0-2; about 75 s wall, 35 s CPU, on 2
shared cores): pretraining reaches 0.976 on the test examples of classes 0-4; on the 493 test
examples of classes 5-9:

    mode          test_accuracy     vs scratch (paired)  trainable  frozen  opt_state_bytes
    full          0.5713 +- 0.0272  0.1427 +- 0.0282     26693      0       213560
    partial       0.5720 +- 0.0232  0.1433 +- 0.0238     26309      384     210488
    linear_probe  0.5652 +- 0.0069  0.1366 +- 0.0067     1605       25088   12848
    features      0.5646 +- 0.0117  0.1359 +- 0.0109     1605       25088   12848
    lora          0.5619 +- 0.0294  0.1332 +- 0.0304     3929       25088   31448
    scratch       0.4287 +- 0.0010                       26693      0       213560

How the defaults were chosen: docs/ablations.md#mnist1d_transfer
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("transfer")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (64, 64, 64)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 1000
    config.train.batch_size = 100
    config.checkpoint.every_steps = 1000
    config.transfer.pretrain_classes = (0, 1, 2, 3, 4)
    config.transfer.target_classes = (5, 6, 7, 8, 9)
    config.transfer.per_class = 20
    config.transfer.seeds = (0, 1, 2)
    config.transfer.modes = ("full", "partial", "linear_probe", "features", "lora", "scratch")
    config.transfer.steps = 200
    config.transfer.batch_size = 50
    config.transfer.optimizer = "adamw"
    config.transfer.learning_rate = 0.003
    config.transfer.scratch_learning_rate = 0.01
    config.transfer.weight_decay = 0.0001
    # Per-group learning-rate multipliers (discriminative fine-tuning): every label of
    # the freeze rules except "frozen" needs one.
    config.transfer.lr_mult = {"head": 1.0, "trunk": 1.0, "lora": 1.0}
    config.transfer.dont_load = ("head/.*",)
    config.transfer.partial_rules = (("conv1/.*", "frozen"), ("head/.*", "head"), (".*", "trunk"))
    config.transfer.lora_targets = ("conv[123]/kernel",)
    config.transfer.lora_rank = 4
    config.transfer.lora_alpha = 8.0
    config.transfer.features_solver = "logistic"
    config.transfer.features_l2 = 100.0
    # A checkpoints directory (workdir/checkpoints/<phase>) of the same architecture to
    # adapt from instead of pretraining here.
    config.transfer.pretrained = ""
    return config
