"""Stop requests: the CLI's SIGTERM / SIGINT handlers ask the training loop to save and stop.

A request is a process-wide flag (a signal handler can only set state): `jaxopt_ft.loop.fit`
checks it after every step, saves a checkpoint at the step reached and raises
:class:`Interrupted`. A phase that starts while a request is pending stops at once.
"""

from __future__ import annotations

import threading

_STOP = threading.Event()


class Interrupted(Exception):
    """A stop was requested (:func:`request`); the phase's progress is saved."""

    def __init__(self, phase: str, step: int, saved: bool):
        where = (
            f"a checkpoint at step {step} of phase {phase!r} is saved"
            if saved
            else f"phase {phase!r} stopped at step {step}"
        )
        super().__init__(f"stopped; {where}. Run the same command again to resume.")
        self.phase, self.step, self.saved = phase, step, saved


def request() -> None:
    """Asks the running (or next) phase to save at its current step and raise Interrupted."""
    _STOP.set()


def clear() -> None:
    """Forgets a stop request (a process that fits again after an :class:`Interrupted`)."""
    _STOP.clear()


def requested() -> bool:
    """Whether a stop was requested and not cleared."""
    return _STOP.is_set()
