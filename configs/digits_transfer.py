"""Transfer on 8x8 digits: pretrain LeNet-5 on digits 0-4, adapt to 5-9 from 20 labels each.

    jaxopt-ft --config=configs/digits_transfer.py --workdir=runs/digits_transfer
    # 5 labels per class:
    jaxopt-ft --config=configs/digits_transfer.py --workdir=runs/digits_transfer_5 \\
        --config.transfer.per_class=5 --config.transfer.batch_size=25

Phases: `pretrain` (`train.steps` = 1,500 Adam steps of 64 on every training example of digits
0-4), then `<mode>_seed<s>` for each of `transfer.modes` x `transfer.seeds` (0-2), each
`transfer.steps` (200) AdamW steps of 50 at 3e-3 (scratch 1e-2; `features` trains only the
head, on cached features). `partial` freezes both conv layers and fine-tunes the dense layers;
LoRA adapts conv2, dense1 and dense2 at rank 4.

Expected (the README's table from `make results`; seeds 0-2; about 2.4 min wall, 55 s CPU, on
2 shared cores, timed with the earlier table in docs/ablations.md): pretraining reaches 0.991
on the test examples of digits 0-4; on the 224 test examples of digits 5-9:

    mode          test_accuracy     vs scratch (paired)  trainable  frozen  opt_state_bytes
    full          0.9405 +- 0.0152  -0.0104 +- 0.0056    20961      0       167704
    partial       0.9167 +- 0.0231  -0.0342 +- 0.0117    18389      2572    147128
    linear_probe  0.7411 +- 0.0109  -0.2098 +- 0.0073    425        20536   3408
    features      0.7515 +- 0.0042  -0.1994 +- 0.0187    425        20536   3408
    lora          0.9122 +- 0.0172  -0.0387 +- 0.0128    2641       20536   21144
    scratch       0.9509 +- 0.0182                       20961      0       167704

With 5 labels per class (the second command) full fine-tuning beats scratch, 0.896 against
0.856; the frozen-trunk modes trail (0.693).

Why pretraining does not help here, and an earlier table: docs/ablations.md#digits_transfer
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("transfer")
    config.dataset.name = "digits"
    config.model.name = "lenet5"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "cosine"
    config.train.steps = 1500
    config.train.batch_size = 64
    config.eval.batch_size = 500
    config.checkpoint.every_steps = 1500
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
    config.transfer.lr_mult = {"head": 1.0, "trunk": 1.0, "lora": 1.0}
    config.transfer.dont_load = ("head/.*",)
    config.transfer.partial_rules = (("conv.*", "frozen"), ("head/.*", "head"), (".*", "trunk"))
    config.transfer.lora_targets = ("conv2/kernel", "dense[12]/kernel")
    config.transfer.lora_rank = 4
    config.transfer.lora_alpha = 8.0
    config.transfer.features_solver = "logistic"
    config.transfer.features_l2 = 100.0
    config.transfer.pretrained = ""
    return config
