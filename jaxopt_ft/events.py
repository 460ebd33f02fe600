"""TensorBoard event files: training scalars while a run goes, the report's plots as images.

Written with tensorboardX, so no TensorFlow is needed. Every training phase of a run writes
its scalars (loss, accuracy, learning rate, sparsity, non-finite counts, steps per second:
whatever the phase logs to ``metrics.jsonl``) to ``<workdir>/tensorboard/<phase>/``, and every
plot of the report goes to ``<workdir>/tensorboard/report/`` as an image. Watch runs with::

    tensorboard --logdir=runs

A resumed phase opens its writer with ``purge_step`` just past the restored step, so
TensorBoard drops the points the killed run had logged after its last checkpoint and the curves
show each step once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

__all__ = ["EventWriter", "add_png", "logdir"]

SUBDIR = "tensorboard"


def logdir(workdir: str, name: str) -> str:
    """The event folder of phase (or ``"report"``) ``name`` in ``workdir``."""
    return os.path.join(workdir, SUBDIR, name)


class EventWriter:
    """Scalars of one phase into a TensorBoard event file.

    Args:
      directory: where the ``events.out.tfevents.*`` file goes (created when missing).
      purge_step: on resume, the first step this run logs again: TensorBoard discards
        earlier-written points at this step and after.
    """

    def __init__(self, directory: str, *, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=directory, purge_step=purge_step, flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes every finite number of ``values`` as scalar ``train/<name>`` at ``step``."""
        for name, value in values.items():
            if isinstance(value, int | float | np.number) and math.isfinite(value):
                self._writer.add_scalar(f"train/{name}", float(value), global_step=step)

    def image(self, tag: str, image: np.ndarray, step: int = 0) -> None:
        """Writes an ``(H, W, C)`` uint8 image."""
        self._writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def close(self) -> None:
        self._writer.close()


def add_png(workdir: str, name: str) -> None:
    """Adds the PNG ``workdir/name`` as image ``name`` (without ``.png``) to the report's run."""
    from PIL import Image

    with Image.open(os.path.join(workdir, name)) as img:
        pixels = np.asarray(img.convert("RGB"))
    writer = EventWriter(logdir(workdir, "report"))
    try:
        writer.image(os.path.splitext(name)[0], pixels)
    finally:
        writer.close()
