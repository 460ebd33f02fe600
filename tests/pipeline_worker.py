"""Runs in its own process for tests/test_pipeline.py: one process of a 2-process group reads
its share of every batch of an epoch and puts it on the global mesh.

    python tests/pipeline_worker.py OUT.npy

The process group comes from ``$JAXOPT_FT_*`` (read by ``parallel.initialize``). Saves the rows
this process read, ``(steps, rows per process)``, after checking that the placed global batch
is the one every process would have read whole.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools  # noqa: E402

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from jaxopt_ft import data, parallel  # noqa: E402

BATCH, N, SEED = 16, 96, 2


def main(out: str) -> None:
    parallel.initialize()
    import jax

    assert jax.process_count() == 2, jax.process_count()
    x = np.repeat(np.arange(N, dtype=np.float32)[:, None], 3, axis=1)
    ds = data.Dataset(x=x, label=np.arange(N, dtype=np.int32) % 3, num_classes=3, name="idx")
    strategy = parallel.make("sharding")
    it = data.train_batches(
        ds,
        batch_size=BATCH,
        seed=SEED,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        place=functools.partial(strategy.shard_batch, local=True),
    )
    mine = []
    for step in range(N // BATCH):
        batch = next(it)
        assert batch["x"].shape == (BATCH, 3), batch["x"].shape  # a global array
        local = np.concatenate([np.asarray(s.data) for s in batch["x"].addressable_shards])
        mine.append(local[:, 0].astype(int))
        whole = multihost_utils.process_allgather(batch["x"], tiled=True)
        want = data.batch_at(ds, batch_size=BATCH, seed=SEED, step=step)["x"]
        np.testing.assert_array_equal(np.asarray(whole), want)
    np.save(out, np.stack(mine))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
