"""Data parallelism: jit over a device mesh, pmap, FSDP sharding, multi-process start-up.

One :class:`Strategy` per mode wraps a pure ``train_step(state, batch, key) -> (state,
metrics)`` without changing it::

  strategy = parallel.make("sharding")       # or "pmap", "none"; fsdp=True to shard params
  state = strategy.prepare(state)            # replicate (or shard) on the devices
  train_step = train.make_train_step(axis_name=strategy.axis_name)
  step = strategy.step(train_step)           # compiled, state donated
  for k in range(steps):
      state, metrics = step(state, batch_at(k), key)   # the global batch, host arrays
  ckpt.save(steps, strategy.unwrap(state).tree())      # checkpoint layout
  plain = parallel.local(strategy.unwrap(state))        # one-device copy for evaluation

``loop.fit(state, step_fn, batches, ..., strategy=strategy)`` does all of this (restore into
the strategy's layout, checkpoints in the plain layout, a single-device state back), and the
experiments build their strategy from ``config.parallel`` (``experiments.common.strategy``).

What a step function must do, per mode:

- ``none`` / ``sharding``: nothing. Under ``sharding`` the loss's mean over the (global) batch
  is partitioned by XLA into per-device partial sums and an all-reduce, BatchNorm sees the
  global batch, and the result equals the single-device step up to float reassociation.
- ``pmap``: the step runs per device on ``B / n`` examples, with ``axis_name="data"`` bound,
  and must average what the replicas have to agree on itself, as classic pmap code does:
  gradients with ``lax.pmean`` before ``tx.update`` (and before anything non-linear in them:
  PCGrad projections, GradNorm weights, the non-finite guard), BatchNorm statistics after the
  forward pass. `train.make_train_step(axis_name=strategy.axis_name)` does all of this; the
  strategy averages the metrics. Per-batch statistics used in the forward pass (BatchNorm's
  normalisation, dynamic activation ranges of fake quantization) are per-device unless they
  reduce over ``axis_name`` themselves (``nn.BatchNorm(axis_name=...)``,
  ``lax.pmin``/``lax.pmax`` of the range).

Multi-process: call :func:`initialize` first (from arguments or ``$JAXOPT_FT_COORDINATOR``,
``$JAXOPT_FT_NUM_PROCESSES``, ``$JAXOPT_FT_PROCESS_ID``); every process then runs the same
program, the compiled step takes the same global batch everywhere and feeds only the local rows
(or pass a process's own rows, :func:`process_slice`, to ``shard_batch(batch, local=True)``),
orbax checkpoints are written by all processes together, and only :func:`is_main_process`
writes reports.
"""

from jaxopt_ft.parallel.core import (
    AXIS,
    MODES,
    Strategy,
    all_mean,
    check_batch,
    local,
)
from jaxopt_ft.parallel.distributed import (
    ENV_COORDINATOR,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
    initialize,
    is_main_process,
    process_batch,
    process_slice,
)
from jaxopt_ft.parallel.fsdp import (
    fsdp_shardings,
    fsdp_spec,
    replicated_shardings,
)
from jaxopt_ft.parallel.strategy import make

__all__ = [
    "AXIS",
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "MODES",
    "Strategy",
    "all_mean",
    "check_batch",
    "fsdp_shardings",
    "fsdp_spec",
    "initialize",
    "is_main_process",
    "local",
    "make",
    "process_batch",
    "process_slice",
    "replicated_shardings",
]
