"""A run's workdir stays sound: one identity (``config.json``), one run at a time.

:func:`check` refuses a workdir that cannot hold a run or that holds a run of another config,
before anything is written. :func:`lock` keeps a second run out of a busy workdir: it holds an
``fcntl`` lock on ``workdir/lock``, which the kernel releases when the holder dies, so the lock
of a killed run is never stale. :class:`Identity` writes ``config.json`` for the run and puts
back what was there before when the run fails to start (a refused ``--allow_config_change``
leaves the file byte-identical).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator

CONFIG = "config.json"
LOCK = "lock"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check(workdir: str | None, config: dict, *, allow_change: bool) -> None:
    """Creates ``workdir`` if needed; refuses one that holds a run of a different config.

    Args:
      workdir: the run's directory.
      config: the run's config as plain JSON data.
      allow_change: accept a workdir whose ``config.json`` differs from ``config``.

    Raises:
      ValueError: no workdir, a path that is not a usable directory, or (without
        ``allow_change``) a workdir holding another config; the message lists the differences.
    """
    if not workdir:
        raise ValueError("--workdir is required; pass a directory, e.g. --workdir=runs/demo.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir!r} exists and is not a directory; pick another.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--workdir={workdir!r} cannot be created ({e.strerror}).") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir={workdir!r} is not writable; pick a writable directory.")
    old = read_config(workdir)
    if old is None or old == config or allow_change:
        return
    a, b = _flatten(old), _flatten(config)
    diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    shown = ", ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diff)
    raise ValueError(
        f"--workdir={workdir!r} holds a run of a different config ({shown}); use a new "
        "workdir, or pass --allow_config_change to resume it with this config."
    )


def read_config(workdir: str) -> dict | None:
    """The workdir's ``config.json`` (None when it is missing or unreadable)."""
    try:
        with open(os.path.join(workdir, CONFIG)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


class BusyError(ValueError):
    """Another run holds the workdir."""


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Holds ``workdir``'s lock for the block; raises :class:`BusyError` when another run has it.

    The lock file is removed on the way out. A run killed while holding it leaves the file, but
    not the lock: the kernel drops an ``flock`` with its holder, so the next run takes it over.
    """
    path = os.path.join(workdir, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BusyError(
                f"--workdir={workdir!r} is in use by a running run ({holder}); wait for it to "
                "finish or stop it, or use another workdir."
            ) from None
        # The holder may have removed the file between our open and flock: lock the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


class Identity:
    """Writes ``config.json`` for a run and can put the workdir's previous one back."""

    def __init__(self, workdir: str, config: dict):
        self.path = os.path.join(workdir, CONFIG)
        self.checkpoints = os.path.join(workdir, "checkpoints")
        self.config = config
        try:
            with open(self.path, "rb") as f:
                self.before: bytes | None = f.read()
        except FileNotFoundError:
            self.before = None
        self.had_checkpoints = os.path.isdir(self.checkpoints)

    def write(self) -> None:
        _atomic_write(self.path, json.dumps(self.config, indent=2).encode())

    def undo(self) -> None:
        """Restores the previous ``config.json`` (or removes it when nothing was trained)."""
        if self.before is not None:
            _atomic_write(self.path, self.before)
        elif not self.had_checkpoints and not _has_files(self.checkpoints):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _has_files(path: str) -> bool:
    return any(files for _, _, files in os.walk(path))


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
