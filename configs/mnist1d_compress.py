"""Compression on MNIST-1D: a 128-channel CNN, dense vs 90 % sparse vs channel-pruned.

    jaxopt-ft --config=configs/mnist1d_compress.py --workdir=runs/mnist1d_compress

Model: the MNIST-1D paper's CNN widened to 128 channels (105,738 params), wide enough that
90 % of its weights can go at no cost. Phases: ``dense`` (Adam 1e-2, cosine decay, label
smoothing 0.1, 2,000 steps of 100); ``prune`` (1,500 steps: global magnitude pruning of the
conv2, conv3 and head kernels, conv1 left dense, Zhu-Gupta cubic ramp over the first 750 steps
with masks updated every 50, Adam from 3e-3 with cosine decay); ``structured`` (the lower-L2
half of every layer's channels removed, 128 -> 64, then 500 steps from 3e-3, cosine).

Expected, seeds 0 / 1 / 2 (``--config.seed=N``; the README's generated tables come from
``make results``); step_ms is one jitted forward pass over the 1,000 test examples, the three
models timed side by side:

    row         test_accuracy          params   nonzero  sparsity  size_bytes  step_ms
    dense       0.968 / 0.965 / 0.963  105,738  105,738  0         422,952     16-17
    pruned      0.968 / 0.970 / 0.966  105,738   11,504  0.900004   63,820     16-17
    structured  0.960 / 0.966 / 0.964   28,298   28,298  0.735     113,192      7

A run took 36-56 s wall on 2 CPU cores.

How the default was chosen (measured with an earlier version of the training loop, whose
absolute accuracies differ from today's by up to 0.8 points): pruned minus dense test accuracy
in points, seeds 0 / 1 / 2, global magnitude with conv1 dense and fine-tuning from 3e-3 unless
noted (dense steps + prune steps):

- 64 channels, 3,000 + 2,000: -1.4 / -2.0 / -2.1; ERK allocation -2.1 / -2.5 / -2.9;
  fine-tuning from 1e-2 -3.1 / -1.3 / -1.9, from 1e-3 -4.4 / -3.4 / -2.7;
  3,000 + 4,000: -1.1 / -0.7 / -1.6.
- 96 channels, 3,000 + 1,500: -0.6 / -0.5 / -0.4.
- 128 channels, 2,000 + 1,500: +0.1 / 0.0 / -0.1 (the default); 2,000 + 1,000: -0.3 / -0.5 /
  +0.4; 1,500 + 1,000: -1.1 / -0.6 / +1.0; 1,500 + 1,500: -0.7 / -0.8 / +0.2; 3,000 + 2,000:
  -0.6 / -0.4 / -0.3. 3,000 dense steps raise dense accuracy to 0.970 / 0.974 / 0.967, 0.4
  points for 50 % more dense training.
"""

import ml_collections

from jaxopt_ft.experiments.common import base_config


def get_config(arg=None):
    del arg
    config = base_config()
    config.experiment = "compress"
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
    config.prune = ml_collections.ConfigDict(
        {
            # Unstructured pruning (phase "prune"): at least this fraction of the prunable
            # weights ends at zero.
            "sparsity": 0.9,
            "scorer": "magnitude",  # magnitude | random | saliency
            "scope": "global",  # layer | global
            "distribution": "uniform",  # uniform | erk (layer scope)
            # ((regex over param paths, bool), ...); () = every kernel with ndim >= 2.
            "rules": (),
            "exclude_first": True,  # conv1 stays dense
            "exclude_last": False,
            "steps": 1500,  # fine-tuning steps, pruning included
            "begin_fraction": 0.0,  # pruning ramps up between these fractions of the steps
            "end_fraction": 0.5,
            "frequency": 50,  # steps between mask updates
            "learning_rate": 3e-3,
            "schedule": "cosine",  # of the fine-tuning (and structured) learning rate
            "export_format": "bitmask",  # bitmask | indices
            # Structured pruning (phase "structured"): fraction of each layer's units removed.
            "structured_sparsity": 0.5,
            # ((regex over layer names, fraction), ...) overrides structured_sparsity per layer.
            "structured_rules": (),
            "structured_norm": "l2",  # l1 | l2
            "structured_steps": 500,
            "structured_learning_rate": 3e-3,
        }
    )
    # Quantization rows: int8_ptq, int8_weights, qat_int4, pruned_quantized.
    config.quant = ml_collections.ConfigDict(
        {
            "bits": 8,
            "qat_bits": 4,
            "first_last_bits": 8,  # first and last layer stay at 8 bits (0: no exception)
            "qat_steps": 100,
            "learning_rate": 1e-3,
            "calibration_batches": 10,
            "observer": "minmax",
        }
    )
    return config
