"""Multi-process start-up through ``jax.distributed`` and each process's share of a batch.

With several processes (one per host, or several on one machine for tests) every process runs
the same program; ``jax.devices()`` then lists the devices of all processes and a mesh over them
spans the hosts. Each process feeds only the rows of the global batch that land on its own
devices (:func:`process_batch`), and only process 0 writes reports (:func:`is_main_process`);
orbax checkpoints are written collectively by all processes.

On CPU the cross-process collectives go through gloo (``jax_cpu_collectives_implementation``,
the default of this jax version), so a 2-process run works on one machine without MPI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

ENV_COORDINATOR = "JAXOPT_FT_COORDINATOR"
ENV_NUM_PROCESSES = "JAXOPT_FT_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXOPT_FT_PROCESS_ID"

_initialized = False


def _int_setting(name: str, value: Any, env: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}={value!r} is not an integer. Fix: pass an int or set ${env} to one."
        ) from None


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Starts ``jax.distributed`` from arguments, else the ``JAXOPT_FT_*`` environment variables.

    Call it once, first thing in ``main``, before any JAX computation. Arguments left as None
    are read from ``$JAXOPT_FT_COORDINATOR`` (``host:port`` of process 0),
    ``$JAXOPT_FT_NUM_PROCESSES`` and ``$JAXOPT_FT_PROCESS_ID``. With none of the three set
    anywhere this is a single-process run and nothing happens.

    Args:
      coordinator_address: ``host:port`` where process 0 listens.
      num_processes: Number of processes in the job.
      process_id: This process's index, ``0 <= process_id < num_processes``.
      environ: Where to read the variables (default ``os.environ``; for tests).

    Returns:
      True when ``jax.distributed`` was started (by this or an earlier call), False for a
      single-process run.

    Raises:
      ValueError: only some of the three settings are given, or they are not valid.
    """
    global _initialized
    env = os.environ if environ is None else environ
    settings = {
        "coordinator_address": (coordinator_address, ENV_COORDINATOR),
        "num_processes": (num_processes, ENV_NUM_PROCESSES),
        "process_id": (process_id, ENV_PROCESS_ID),
    }
    values = {k: (v if v is not None else env.get(e) or None) for k, (v, e) in settings.items()}
    given = [k for k, v in values.items() if v is not None]
    if not given:
        return _initialized
    missing = [f"{k} (${settings[k][1]})" for k, v in values.items() if v is None]
    if missing:
        raise ValueError(
            f"Multi-process start-up needs coordinator_address, num_processes and process_id; "
            f"got {', '.join(given)} but not {', '.join(missing)}. Fix: set all three, or "
            "none of them for a single-process run."
        )
    n = _int_setting("num_processes", values["num_processes"], ENV_NUM_PROCESSES)
    pid = _int_setting("process_id", values["process_id"], ENV_PROCESS_ID)
    address = str(values["coordinator_address"])
    if n < 1 or not 0 <= pid < n:
        raise ValueError(
            f"process_id={pid} with num_processes={n}: need num_processes >= 1 and "
            "0 <= process_id < num_processes."
        )
    if ":" not in address:
        raise ValueError(
            f"coordinator_address={address!r} has no port. Fix: pass 'host:port' of process 0, "
            "e.g. 'localhost:12355'."
        )
    if _initialized:
        return True
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid)
    _initialized = True
    return True


def is_main_process() -> bool:
    """True on the process that writes reports and plots (process 0)."""
    return jax.process_index() == 0


def process_slice(batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that this process feeds to its devices.

    Rows are split in process order, which matches meshes built by
    :func:`jaxopt_ft.parallel.make` (devices ordered by process). A loader that can read
    rows selectively uses this to load only its share.

    Raises:
      ValueError: ``batch_size`` does not divide by the number of processes.
    """
    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ValueError(
            f"Global batch size {batch_size} does not divide by the {count} processes. "
            f"Fix: use a multiple of {count}."
        )
    per = batch_size // count
    return slice(index * per, (index + 1) * per)


def process_batch(batch: Any) -> Any:
    """This process's rows of the global ``batch`` (a pytree of arrays with a batch axis 0).

    Identity in a single-process run.
    """
    if jax.process_count() == 1:
        return batch
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(
            f"Batch leaves disagree on the batch size (leading dims {sorted(sizes)}). "
            "Fix: give every array of the batch the same first dimension."
        )
    rows = process_slice(sizes.pop())
    return jax.tree.map(lambda x: x[rows], batch)
