"""Transfer on 8x8 digits: pretrain LeNet-5 on digits 0-4, adapt to 5-9 from 20 labels each.

    jaxopt-ft --config=configs/digits_transfer.py --workdir=runs/digits_transfer

Pretraining uses every training example of digits 0-4 (Adam 1e-3, cosine, 1,500 steps of 64).
Each mode then adapts to digits 5-9 from 20 labelled examples per class (AdamW 3e-3, cosine,
200 steps of 50; scratch uses 1e-2) and is scored on all test examples of 5-9, averaged over
three seeds. ``partial`` freezes both conv layers and fine-tunes the dense layers; LoRA adapts
conv2, dense1 and dense2 at rank 4.

Expected: RESULTS_PLACEHOLDER
"""

import ml_collections

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.experiment = "transfer"
    config.dataset.name = "digits"
    config.model.name = "lenet5"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "cosine"
    config.train.steps = 1500
    config.train.batch_size = 64
    config.eval.batch_size = 500
    config.checkpoint.every_steps = 1500
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
            "lr_mult": {"head": 1.0, "trunk": 1.0, "lora": 1.0},
            "dont_load": ("head/.*",),
            "partial_rules": (("conv.*", "frozen"), ("head/.*", "head"), (".*", "trunk")),
            "lora_targets": ("conv2/kernel", "dense[12]/kernel"),
            "lora_rank": 4,
            "lora_alpha": 8.0,
            "features_solver": "logistic",
            "features_l2": 100.0,
            "pretrained": "",
        }
    )
    return config
