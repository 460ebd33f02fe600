"""Transfer on 8x8 digits: pretrain LeNet-5 on digits 0-4, adapt to 5-9 from 20 labels each.

    jaxopt-ft --config=configs/digits_transfer.py --workdir=runs/digits_transfer

Pretraining uses every training example of digits 0-4 (Adam 1e-3, cosine, 1,500 steps of 64).
Each mode then adapts to digits 5-9 from 20 labelled examples per class (AdamW 3e-3, cosine,
200 steps of 50; scratch uses 1e-2) and is scored on all test examples of 5-9, averaged over
three seeds. ``partial`` freezes both conv layers and fine-tunes the dense layers; LoRA adapts
conv2, dense1 and dense2 at rank 4.

Expected (measured, seeds 0-2; about 2.4 min wall, 55 s CPU, on 2 shared cores): pretraining
reaches 0.991 on the test examples of digits 0-4; on the 224 test examples of digits 5-9:

    mode          accuracy  vs scratch (paired)  trainable  frozen
    full          0.940     -0.009 +- 0.006      20,961     0
    partial       0.917     -0.033 +- 0.011      18,389     2,572
    linear_probe  0.741     -0.208 +- 0.009      425        20,536
    features      0.751     -0.198 +- 0.021      425        20,536
    lora          0.912     -0.037 +- 0.013      2,641      20,536
    scratch       0.949                          20,961     0

Unlike MNIST-1D, pretraining on 0-4 does not help here: 20 labels per class already take
LeNet-5 from scratch to 0.95, and the 84 features it learns for 0-4 separate 5-9 poorly (the
frozen-trunk modes lose 0.2). With 5 labels per class (``--config.transfer.per_class=5
--config.transfer.batch_size=25``) full fine-tuning does beat scratch, 0.896 against 0.856;
the frozen-trunk modes still trail (0.693).
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
