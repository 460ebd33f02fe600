"""Compression on MNIST-1D: a 128-channel CNN pruned (90 % sparse, channel-pruned) and quantized.

    jaxopt-ft --config=configs/mnist1d_compress.py --workdir=runs/mnist1d_compress
    # seeds 1 and 2 (`scripts/more_seeds.sh mnist1d_compress` runs both):
    jaxopt-ft --config=configs/mnist1d_compress.py --workdir=runs/mnist1d_compress_seed1 \\
        --config.seed=1

Phases (shorten these for a quick run):
- `dense`: `train.steps` (2,000), Adam 1e-2, cosine, label smoothing 0.1, batch 100;
- `prune`: `prune.steps` (1,500), global magnitude pruning to `prune.sparsity` (0.9), conv1
  dense, cubic ramp to `prune.end_fraction` (0.5) of the phase, masks every 50 steps;
- `structured`: half of every layer's channels removed (128 -> 64), then
  `prune.structured_steps` (500) steps;
- `qat`, `pruned_qat`: `quant.qat_steps` (100) each (0 turns those rows into PTQ);
  `int8_ptq` and `int8_weights` train nothing.

Expected (README: `make results` and `scripts/more_seeds.sh mnist1d_compress`); test accuracy
for seeds 0 / 1 / 2, the other columns seed 0; params 105,738 except structured (28,298);
step_ms is one jitted forward pass over the 1,000 test examples, all models timed side by side:

    row               test_accuracy             nonzero  sparsity  size_bytes  step_ms
    dense             0.9680 / 0.9650 / 0.9630  105738   0         422952      9.996
    pruned            0.9680 / 0.9700 / 0.9660  11504    0.9000    63820       9.609
    structured        0.9600 / 0.9660 / 0.9640  28298    0.7347    113192      4.512
    int8_ptq          0.9670 / 0.9650 / 0.9610  104416   0.0126    108824      7.026
    int8_weights      0.9670 / 0.9650 / 0.9610  104416   0.0126    108758      10.16
    qat_int4          0.9630 / 0.9660 / 0.9660  85430    0.1939    59670       7.503
    pruned_quantized  0.9590 / 0.9640 / 0.9630  11497    0.9001    18306       6.971

pruned_quantized size_bytes over seeds 0 / 1 / 2: 18306 / 18609 / 18684. A run took 36-56 s
wall on 2 CPU cores.

How the defaults were chosen: docs/ablations.md#mnist1d_compress
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("compress")
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
    config.eval.timing_repeats = 20
    # Unstructured pruning (phase "prune"): this fraction of the prunable weights ends at
    # zero (round(fraction * n) weights, half to even, as torch.nn.utils.prune counts).
    config.prune.sparsity = 0.9
    config.prune.scorer = "magnitude"  # magnitude | random | saliency
    config.prune.scope = "global"  # layer | global
    config.prune.distribution = "uniform"  # uniform | erk (layer scope)
    # ((regex over param paths, bool), ...); () = every kernel with ndim >= 2.
    config.prune.rules = ()
    config.prune.exclude_first = True  # conv1 stays dense
    config.prune.exclude_last = False
    config.prune.steps = 1500  # fine-tuning steps, pruning included
    config.prune.begin_fraction = 0.0  # pruning ramps up between these fractions of the steps
    config.prune.end_fraction = 0.5
    config.prune.frequency = 50  # steps between mask updates
    config.prune.learning_rate = 0.003
    config.prune.schedule = "cosine"  # of the fine-tuning (and structured) learning rate
    config.prune.export_format = "bitmask"  # bitmask | indices
    # Structured pruning (phase "structured"): fraction of each layer's units removed.
    config.prune.structured_sparsity = 0.5
    # ((regex over layer names, fraction), ...) overrides structured_sparsity per layer.
    config.prune.structured_rules = ()
    config.prune.structured_norm = "l2"  # l1 | l2
    config.prune.structured_steps = 500
    config.prune.structured_learning_rate = 0.003
    # Quantization rows: int8_ptq, int8_weights, qat_int4, pruned_quantized.
    config.quant.bits = 8
    config.quant.qat_bits = 4
    config.quant.first_last_bits = 8  # first and last layer stay at 8 bits (0: no exception)
    config.quant.qat_steps = 100
    config.quant.learning_rate = 0.001
    config.quant.calibration_batches = 10
    config.quant.observer = "minmax"
    return config
