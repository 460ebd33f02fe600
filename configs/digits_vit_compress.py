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

Expected (seed 0; 450 test images, so one image is 0.22 points):

    row               test_accuracy (seed 0)  params  size_bytes
    dense             0.9600                  69066   276264
    pruned            0.9600                  69066   174146
    structured        0.9289                  35978   143912
    int8_ptq          0.9556                  69066   81706
    int8_weights      0.9600                  69066   81489
    qat_int4          0.9533                  69066   48927
    pruned_quantized  0.9600                  69066   40683

Switch the model on the command line (`--config.model.name=lenet5`), or run the transfer and
multitask experiments on this ViT with `--config.model.name=vit --config.model.patch_size=2`.
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
