"""Optuna search over the training recipe of the MNIST-1D paper's CNN, 30 trials of 1,500 steps.

    jaxopt-ft --config=configs/mnist1d_hpo.py --workdir=runs/mnist1d_hpo

Every trial trains `train.steps` = 1,500 steps at batch 100 (as each cell of
configs/mnist1d_sweep.py) on 90 % of the training split and reports the accuracy on the other
10 % every 250 steps to ASHA; the best trial is retrained on the whole split and tested. Space:
optimizer in {momentum, adam, adamw}, learning rate log-uniform in [1e-3, 1], schedule in
{constant, warmup_cosine} (5 % warm-up), label smoothing uniform in [0, 0.2]; TPE. Start the
same command in more terminals to share the study (see the README for a database server and
`optuna-dashboard`).

Measured with `--config.seed=0/1/2` (three independent studies, one worker each, on a shared
2-core machine under heavy load from other jobs, so wall times are inflated; CPU time is the
fairer figure):

    seed  done/pruned  steps*  CPU s  wall s  best trial: recipe (validation)        test
    0      2 / 28      12,500    88    475    adamw 0.0158 wcos ls 0.146 (0.968)     0.962
    1     10 / 20      22,000   104    546    adam 0.0150 const ls 0.086 (0.968)     0.945
    2      9 / 21      20,750    97    569    momentum 0.318 wcos ls 0.167 (0.953)   0.961

    wcos = warmup_cosine, const = constant, ls = label smoothing; test = retrained, tested.
    * over all 30 trials, plus 1,500 steps of retraining; the 28 optimizer x schedule cells of
      mnist1d_sweep train 42,000 steps (152 s of CPU time for that config, batch sweep included).

Against the sweep's best cell (momentum 0.1, constant: 0.966 test accuracy, picked on the test
split itself), the studies reach 0.962 / 0.945 / 0.961 with about a third to a half of the
training steps: fewer steps, but not (yet) a better configuration. The 400 held-out examples
make the validation ranking noisy (seed 1's best trial by validation tests at 0.945).
"""

from jaxopt_ft.experiments.settings import base_config


def get_config(arg=None):
    del arg
    config = base_config("hpo")
    config.dataset.name = "mnist1d"
    config.model.name = "cnn"
    config.train.steps = 1500
    config.train.batch_size = 100
    config.train.log_every = 500
    config.train.label_smoothing = 0.1
    config.schedule.decay_rate = 0.1
    config.schedule.warmup_steps = 75  # 5 % of each trial, as in mnist1d_sweep
    config.checkpoint.every_steps = 0
    config.hpo.trials = 30
    config.hpo.eval_every = 250
    return config
