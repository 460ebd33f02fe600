"""Compression of a small Vision Transformer on 8x8 digits: attention included.

    jaxopt-ft --config=configs/digits_vit_compress.py --workdir=runs/digits_vit_compress
    # seeds 1 and 2:
    jaxopt-ft --config=configs/digits_vit_compress.py --workdir=runs/digits_vit_compress_seed1 \\
        --config.seed=1

The ViT cuts each image into 16 patches of 2x2, has 2 pre-LN blocks of 4 heads (hidden 64,
MLP 128) and mean-pools the tokens. Every matmul is compressed: the attention projections are
3-D ``DenseGeneral`` kernels, quantized per head and output channel, so the quantized rows
report ``quantized_weight_fraction`` 1.0 (``quantized_ops`` 14: patch embedding, 4
projections and 2 MLP layers per block, head).

Phases: `dense` (`train.steps`), `prune` (50 % global magnitude, patch embedding dense),
`structured` (half the heads of every block, 4 -> 2, and half the MLP units, 128 -> 64, then
`prune.structured_steps`), `qat` and `pruned_qat` (`quant.qat_steps` each).

Expected test accuracy for seeds 0 / 1 / 2 (450 test images: one image is 0.22 points), the
other columns seed 0; a run took 5-25 min wall on 2 CPU cores shared with other jobs:

    row               test_accuracy             params  nonzero  size_bytes  compression
    dense             0.9600 / 0.9444 / 0.9467  69066   69066    276264
    pruned            0.9600 / 0.9533 / 0.9489  69066   35978    174146
    structured        0.9289 / 0.9111 / 0.9200  35978   35978    143912
    int8_ptq          0.9556 / 0.9489 / 0.9489  69066   68628    81706       3.38
    int8_weights      0.9600 / 0.9467 / 0.9444  69066   68628    81489       3.39
    qat_int4          0.9533 / 0.9489 / 0.9578  69066   61097    48927       5.65
    pruned_quantized  0.9600 / 0.9511 / 0.9467  69066   35976    40683       6.79

int8_ptq stays within 0.5 points of dense and qat_int4 within 1.5 (-0.67 / +0.44 / +1.11);
structured (2 of 4 heads and half the MLP units left, 52 % of the params) loses 2-3 points
after 500 fine-tuning steps.

Switch the model on the command line (`--config.model.name=lenet5`), or run the transfer and
multitask experiments on a ViT with `--config.model.name=vit` (their configs have no
`model.patch_size` key, so the ViT cuts 4x4 patches there).
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("compress")
    config.dataset.name = "digits"
    config.model.name = "vit"
    config.model.patch_size = 2
    config.model.hidden = 64
    config.model.depth = 2
    config.model.num_heads = 4
    config.model.mlp_dim = 128
    config.model.pool = "mean"
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "cosine"
    config.train.label_smoothing = 0.1
    config.train.steps = 3000
    config.train.batch_size = 64
    config.train.log_every = 500
    config.checkpoint.every_steps = 0
    config.eval.batch_size = 500
    config.eval.timing_repeats = 20
    config.prune.sparsity = 0.5
    config.prune.scope = "global"
    config.prune.exclude_first = True  # the patch embedding stays dense
    config.prune.steps = 1000
    config.prune.end_fraction = 0.5
    config.prune.frequency = 50
    config.prune.learning_rate = 3e-4
    config.prune.schedule = "cosine"
    # Structured: half of every block's heads and MLP units.
    config.prune.structured_rules = ((".*/heads", 0.5), (".*/mlp", 0.5))
    config.prune.structured_steps = 500
    config.prune.structured_learning_rate = 3e-4
    config.quant.bits = 8
    config.quant.qat_bits = 4
    config.quant.first_last_bits = 8
    config.quant.qat_steps = 300
    config.quant.learning_rate = 3e-4
    config.quant.calibration_batches = 10
    return config
