"""Transfer on MNIST-1D: pretrain a 64-channel CNN on classes 0-4, adapt to 5-9 from 20 labels each.

    jaxopt-ft --config=configs/mnist1d_transfer.py --workdir=runs/mnist1d_transfer

Pretraining uses every training example of classes 0-4 (Adam 1e-2, cosine, 1,000 steps of
100). Each mode then adapts to classes 5-9 from 20 labelled examples per class (AdamW 3e-3,
cosine, 200 steps of 50; scratch uses 1e-2) and is scored on all test examples of 5-9, averaged
over three seeds (each seed draws its own 100 labels and new head).

Expected: RESULTS_PLACEHOLDER
"""

import ml_collections

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.experiment = "transfer"
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.model.channels = (64, 64, 64)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.schedule.name = "cosine"
    config.train.steps = 1000
    config.train.batch_size = 100
    config.checkpoint.every_steps = 1000
    config.transfer = ml_collections.ConfigDict(
        {
            "pretrain_classes": (0, 1, 2, 3, 4),
            "target_classes": (5, 6, 7, 8, 9),
            "per_class": 20,
            "seeds": (0, 1, 2),
            "modes": ("full", "partial", "linear_probe", "features", "lora", "scratch"),
            "steps": 200,
            "batch_size": 50,
            "optimizer": "adamw",
            "learning_rate": 3e-3,
            "scratch_learning_rate": 1e-2,
            "weight_decay": 1e-4,
            # Per-group learning-rate multipliers (discriminative fine-tuning): every label of
            # the freeze rules except "frozen" needs one.
            "lr_mult": {"head": 1.0, "trunk": 1.0, "lora": 1.0},
            "dont_load": ("head/.*",),
            "partial_rules": (("conv1/.*", "frozen"), ("head/.*", "head"), (".*", "trunk")),
            "lora_targets": ("conv[123]/kernel",),
            "lora_rank": 4,
            "lora_alpha": 8.0,
            "features_solver": "logistic",
            "features_l2": 100.0,
            # A checkpoints directory (workdir/checkpoints/<phase>) of the same architecture to
            # adapt from instead of pretraining here.
            "pretrained": "",
        }
    )
    return config
