"""Command line: ``jaxopt-ft --config=configs/<file>.py[:arg] --workdir=DIR [--config.a.b=v]``.

The whole config is validated before any work starts. Bad input (an unknown name, an
out-of-range value, an unusable workdir, a workdir that holds another config) is one line on
stderr and exit code 2; files already in the workdir are left untouched.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py, optionally :arg).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (only on a terminal).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume in a workdir whose config.json differs from this config (the new config wins).",
)

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line or config input."""


def _fail(message: str) -> None:
    message = " ".join(str(message).split())
    print(f"jaxopt-ft: error: {message}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_json(config) -> dict:
    """The config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def check_workdir(workdir: str, config, *, allow_change: bool) -> None:
    """Creates ``workdir`` if needed; refuses one that holds a run of a different config."""
    if not workdir:
        raise UsageError("--workdir is required; pass a directory, e.g. --workdir=runs/demo.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir={workdir!r} exists and is not a directory; pick another.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--workdir={workdir!r} cannot be created ({e.strerror}).") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir={workdir!r} is not writable; pick a writable directory.")
    path = os.path.join(workdir, "config.json")
    new = config_json(config)
    if os.path.exists(path) and not allow_change:
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old != new:
            a, b = _flatten(old), _flatten(new)
            diff = sorted(
                k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")
            )
            shown = ", ".join(
                f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diff
            )
            raise UsageError(
                f"--workdir={workdir!r} holds a run of a different config ({shown}); use a new "
                "workdir, or pass --allow_config_change to resume it with this config."
            )
    from jaxopt_ft import parallel

    if parallel.is_main_process():
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(new, f, indent=2)
        os.replace(tmp, path)


def main(argv) -> None:
    from jaxopt_ft import experiments, parallel
    from jaxopt_ft import report as report_lib

    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; pass options as --name=value.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if config is None:
        _fail("--config is required, e.g. --config=configs/mnist1d_cnn.py.")
    try:
        config.keys()  # config_flags defers load errors to the first access
    except OSError as e:
        detail = [ln.strip() for ln in str(e).splitlines() if "Errno" in ln or "Error" in ln]
        _fail(
            f"cannot load --config ({detail[-1] if detail else str(e)}); pass an existing "
            "config file, e.g. --config=configs/mnist1d_cnn.py."
        )
    workdir = _WORKDIR.value
    debug = bool(os.environ.get("JAXOPT_FT_DEBUG"))
    try:
        # A multi-process run ($JAXOPT_FT_COORDINATOR etc.) joins its process group first.
        parallel.initialize()
        kind, settings = experiments.prepare(config)
        check_workdir(workdir, config, allow_change=_ALLOW_CONFIG_CHANGE.value)
    except (ValueError, TypeError) as e:
        if debug:
            raise
        _fail(str(e))
    try:
        report = kind.run(settings, workdir, progress=_PROGRESS.value)
    except (ValueError, TypeError) as e:
        # Errors that need the data or a checkpoint (e.g. a checkpoint of another model) can
        # only be seen once the run starts; they are still bad input, not crashes.
        if debug:
            raise
        _fail(str(e))
    if not parallel.is_main_process():
        return  # only process 0 writes reports
    report_lib.write(workdir, report)
    for row in report["rows"]:
        print(json.dumps(row))


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        # config_flags reports an override of a key the config lacks as AttributeError.
        msg = str(e).strip("\"' ")
        if isinstance(e, AttributeError | KeyError):
            msg = f"the config has no key {msg!r}; check the --config.<key> overrides."
        _fail(msg)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
