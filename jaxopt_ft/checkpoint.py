"""Checkpoints through an orbax ``CheckpointManager``.

Saves are synchronous and orbax commits each step directory atomically, so a run killed at any
moment leaves only complete checkpoints behind. Restores go through an abstract target built
from a freshly initialised state, so optax NamedTuple states come back as NamedTuples and
every leaf keeps its dtype. A latest checkpoint that cannot be read (truncated, corrupted) is
reported with a warning and the previous one is used instead.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def abstract(tree: PyTree) -> PyTree:
    """Shape/dtype (and sharding) structs for every array leaf of ``tree``."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Saves and restores a training-state pytree under ``directory``.

    Args:
      directory: where step folders are written (created when missing).
      max_to_keep: how many of the most recent checkpoints survive.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: PyTree) -> None:
        """Saves ``tree`` as step ``step`` (overwrites nothing: an existing step is kept)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()

    def restore(self, target: PyTree, step: int | None = None) -> tuple[int, PyTree] | None:
        """Restores the latest readable checkpoint (or ``step``) shaped like ``target``.

        Args:
          target: a concrete or abstract tree with the saved structure.
          step: a specific step; by default the latest one, falling back to older ones with a
            warning when the latest cannot be read.

        Returns:
          ``(step, tree)`` or ``None`` when the directory holds no checkpoint.

        Raises:
          ValueError: checkpoints exist but none matches ``target`` (e.g. another model).
        """
        steps = [step] if step is not None else self.all_steps()[::-1]
        if not steps:
            return None
        abstract_target = abstract(target)
        errors = []
        for s in steps:
            try:
                restored = self._manager.restore(s, args=ocp.args.StandardRestore(abstract_target))
            except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint falls back
                first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                errors.append((s, type(e).__name__, first_line[:300]))
                continue
            # Warned only when an older checkpoint was used; when none fits, the error says all.
            for bad, _, reason in errors:
                logging.warning(
                    "Checkpoint at step %d in %s cannot be restored (%s); used step %d.",
                    bad,
                    self.directory,
                    reason,
                    s,
                )
            return s, restored
        reasons = "; ".join(f"step {s}: {kind}: {why}" for s, kind, why in errors)
        raise ValueError(
            f"No checkpoint in {self.directory} can be restored into this model/optimizer "
            f"({reasons}). Use a fresh --workdir or delete that directory."
        )

    def read(self, step: int | None = None) -> tuple[int, PyTree] | None:
        """``(step, tree)`` of the latest (or ``step``) checkpoint as saved, without a target.

        For looking into a finished run (its params) when the state that wrote it cannot be
        rebuilt; arrays come back as host arrays. ``None`` when there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return step, self._manager.restore(step, args=ocp.args.StandardRestore())

    def delete_after(self, step: int) -> None:
        """Removes checkpoints newer than ``step`` (used after a fallback restore)."""
        for s in self.all_steps():
            if s > step:
                path = os.path.join(self.directory, str(s))
                shutil.rmtree(path, ignore_errors=True)
        self._manager.reload()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
