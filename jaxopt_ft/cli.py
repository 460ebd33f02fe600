"""Command line: ``jaxopt-ft [COMMAND] --config=configs/<file>.py[:arg] --workdir=DIR``.

Commands: ``train`` (the default), ``describe`` (a config's keys), ``summary`` (a workdir's run)
and ``help`` (``-h``, ``--help``); ``python -m jaxopt_ft`` is the same program.

The whole config is validated before any work starts. Bad input (a config file that does not
load, an unknown name or key, an out-of-range value, an unusable or busy workdir, a workdir that
holds another config) is one line on stderr and exit code 2; files already in the workdir are
left untouched. Exit codes: 0 done, 2 bad input, 3 the model ended non-finite, 128 + the signal
(130 SIGINT, 143 SIGTERM) after a stop request saved a checkpoint at the step reached.
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxopt_ft import stopping

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
_QUICK = flags.DEFINE_bool(
    "quick",
    False,
    "Smoke run: every phase cut to 20 steps, two seeds, short timing (recorded in config.json).",
)
_SPLIT = flags.DEFINE_string("split", "test", "evaluate: the dataset split.")
_PHASE = flags.DEFINE_string("phase", None, "evaluate: the phase whose checkpoint is used.")

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
_ARGV: list[str] = []  # the arguments being parsed (for messages)
HELP_ARGS = ("-h", "--help", "-help", "-?")
COMMANDS = ("train", "describe", "summary", "evaluate", "help")


class UsageError(ValueError):
    """Bad command-line or config input."""


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    message = " ".join(str(message).split())
    print(f"jaxopt-ft: error: {message}", file=sys.stderr)
    sys.exit(code)


def config_json(config) -> dict:
    """The config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def _innermost(e: BaseException) -> BaseException:
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    return e


def _config_path() -> str:
    """The --config argument as given (also before the flags are parsed)."""
    given = [a for a in sys.argv + _ARGV if a.startswith(("--config=", "-config="))]
    return given[-1].partition("=")[2] if given else "?"


def _load_error(e: BaseException) -> str:
    """One line for a config file that failed to load (the error at the bottom of the chain)."""
    inner = _innermost(e)
    text = str(inner)
    if "Traceback" in text or "\n" in text:  # config_flags wraps some errors as text
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        errno = [ln for ln in lines if "Errno" in ln]
        text = errno[-1] if errno else lines[-1]
    elif not isinstance(inner, OSError):
        text = f"{type(inner).__name__}: {text}"
    return (
        f"cannot load --config={_config_path()} ({text}); fix the file, or pass a config whose "
        "get_config(arg=None) returns a ConfigDict, e.g. --config=configs/mnist1d_cnn.py."
    )


def _override_error(e: BaseException) -> str:
    """One line for an override of a key the config lacks (config_flags' text is escaped)."""
    raw = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    raw = raw.encode().decode("unicode_escape") if "\\" in raw else raw
    names = re.findall(r"['\"]([A-Za-z_][\w.]*)['\"]", raw)
    hint = re.search(r'Did you mean "([\w.]+)"', raw)
    key = names[0].removeprefix("config.") if names else raw.strip()
    guess = f" (did you mean {hint.group(1)!r}?)" if hint else ""
    return (
        f"the config has no key {key!r}{guess}; check the --config.<key> overrides, and "
        "`jaxopt-ft describe --config=FILE` for the keys."
    )


def _parse_flags(argv):
    if any(a in HELP_ARGS for a in argv[1:]):  # -h / --help become the help command
        argv = [argv[0], "help", *(a for a in argv[1:] if a not in HELP_ARGS)]
    _ARGV[:] = argv
    try:
        return flags.FLAGS(argv)
    except SystemExit:
        if any(a.startswith(("--help", "-help")) for a in argv[1:]):
            sys.exit(0)  # absl's --helpfull / --helpshort print their text, then exit 1
        raise
    except Exception as e:  # noqa: BLE001 - a config file's own error: one line, not a trace
        _fail(_parse_error(e))


def _parse_error(e: BaseException) -> str:
    chain = [e]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(nxt)
    # An override of a key the config lacks fails in config_flags' lookup with a KeyError or
    # AttributeError (the outermost one carries the did-you-mean); a get_config() that returned
    # no config fails there too, but says that its type does not support indexing.
    lookup = [x for x in chain if isinstance(x, AttributeError | KeyError)]
    if lookup and "does not support indexing" not in str(lookup[0]):
        return _override_error(lookup[0])
    if "flag 'config." in str(e):
        return _override_error(e)
    if isinstance(e, flags.Error) and "config file" not in str(e):
        text = str(e).strip("\"' ")
        if text.startswith("flag --config."):  # a value the key's type does not take
            return f"{text}; pass a value of the key's type (see `jaxopt-ft describe`)."
        return text
    return _load_error(e)


def _load_config():
    """The loaded config, or exit 2 naming why the file does not load."""
    import ml_collections

    try:
        config = _CONFIG.value
        error = getattr(type(config), "_ReportError", None)  # config_flags' deferred load error
        if error is not None:
            error(config)
    except Exception as e:  # noqa: BLE001 - whatever a config file raises is bad input
        _fail(_load_error(e))
    if config is not None and not isinstance(config, ml_collections.ConfigDict):
        _fail(
            f"get_config() of --config={_config_path()} returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict; return one, e.g. settings.base_config('train')."
        )
    return config


def main(argv) -> None:
    command, *extra = argv[1:] or ["train"]
    if command not in COMMANDS or extra:
        bad = argv[1:] if command not in COMMANDS else extra
        _fail(
            f"unexpected arguments {bad}; commands: {', '.join(COMMANDS)}; pass options as "
            "--name=value."
        )
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _load_config()
    if config is not None:
        _switch_model(config)
        if _QUICK.value:
            from jaxopt_ft.experiments import quick

            quick.shorten(config)
    debug = bool(os.environ.get("JAXOPT_FT_DEBUG"))
    try:
        if command == "train":
            _train(config, _WORKDIR.value, debug=debug)
        elif command == "evaluate":
            print(json.dumps(_evaluate(_WORKDIR.value)))
        elif command == "summary":
            from jaxopt_ft import cli_text

            print(cli_text.summary(_WORKDIR.value))
        elif command == "help" and config is None:
            from jaxopt_ft import cli_text

            print(cli_text.general_help())
        else:  # describe, or help with a config
            _describe(config)
    except (ValueError, TypeError) as e:
        if debug:
            raise
        _fail(str(e))
    except OSError as e:  # a path the config names that cannot be read or created
        if debug:
            raise
        where = f" {e.filename!r}" if e.filename else ""
        _fail(
            f"cannot use{where} ({e.strerror or e}); check --workdir and dataset.data_dir "
            "(dataset.data_dir='' uses the default)."
        )


def _switch_model(config) -> None:
    """Drops the config file's model options when the command line chooses another model.

    The file's options were chosen for the file's model: ``--config.model.name=mlp`` on a CNN
    config would otherwise fail on the CNN's ``channels``, which no flag can remove, and an
    option both models have can mean different things (an MLP's ``hidden`` widths, a ViT's
    token width). The new model starts from its defaults; options given on the command line
    are kept (and checked).
    """
    given = {a.partition("=")[0].removeprefix("--config.model.") for a in _ARGV}
    if "name" not in given or "model" not in config:
        return
    from jaxopt_ft import models

    name = config.model.get("name")
    if name not in models.NAMES:
        return  # validation names the accepted models
    dropped = [k for k in config.model if k != "name" and k not in given]
    if dropped:
        with config.unlocked():
            for k in dropped:
                del config.model[k]
        print(
            f"jaxopt-ft: note: dropped the config file's model option(s) {', '.join(dropped)}: "
            f"model {name!r} starts from its defaults.",
            file=sys.stderr,
        )


def _evaluate(workdir: str | None) -> dict:
    """A finished run's checkpoint on ``--split``, its model rebuilt from its config.json."""
    import ml_collections

    from jaxopt_ft import experiments
    from jaxopt_ft import workdir as workdir_lib
    from jaxopt_ft.experiments import evaluate

    saved = workdir_lib.read_config(workdir) if workdir and os.path.isdir(workdir) else None
    if saved is None:
        raise UsageError(
            f"--workdir={workdir!r} holds no run (no readable config.json); pass the workdir "
            "of a run started with `jaxopt-ft train`."
        )
    settings = experiments.parse(ml_collections.ConfigDict(saved))
    return evaluate.checkpoint_metrics(settings, workdir, phase=_PHASE.value, split=_SPLIT.value)


def _describe(config) -> None:
    from jaxopt_ft import cli_text, experiments

    if config is None:
        raise UsageError("describe needs --config, e.g. --config=configs/mnist1d_cnn.py.")
    _, settings = experiments.prepare(config)
    print(cli_text.describe(settings))


def _train(config, workdir: str | None, *, debug: bool) -> None:
    from jaxopt_ft import experiments, loop, parallel
    from jaxopt_ft import report as report_lib
    from jaxopt_ft import workdir as workdir_lib

    if config is None:
        raise UsageError("--config is required, e.g. --config=configs/mnist1d_cnn.py.")
    # A multi-process run ($JAXOPT_FT_COORDINATOR etc.) joins its process group first.
    parallel.initialize()
    kind, settings = experiments.prepare(config)
    new = config_json(config)
    workdir_lib.check(workdir, new, allow_change=_ALLOW_CONFIG_CHANGE.value)
    main_process = parallel.is_main_process()
    _quiet_orbax_shutdown()
    with (
        # Workers of one study (experiment hpo) share a workdir by design; other runs lock it.
        workdir_lib.lock(workdir)
        if main_process and not getattr(kind, "SHARES_WORKDIR", False)
        else contextlib.nullcontext(),
        _stop_signals() as caught,
    ):
        identity = workdir_lib.Identity(workdir, new)
        if main_process:
            identity.write()
        try:
            report = kind.run(settings, workdir, progress=_PROGRESS.value)
        except stopping.Interrupted as e:
            _fail(f"{caught[-1] if caught else 'stop request'}: {e}", 128 + _signum(caught))
        except loop.NonFiniteModelError as e:
            _fail(e, EXIT_NONFINITE)
        except (ValueError, TypeError, OSError) as e:
            # Errors that need the data or a checkpoint (e.g. a checkpoint of another model) can
            # only be seen once the run starts; they are still bad input, not crashes, and the
            # workdir keeps the identity of the checkpoints it holds.
            if main_process and not isinstance(e, loop.NonFiniteError):
                identity.undo()
            if debug or isinstance(e, OSError):
                raise
            _fail(str(e))
    if not main_process:
        return  # only process 0 writes reports
    report_lib.write(workdir, report)
    for row in report["rows"]:
        print(json.dumps(row))


def _quiet_orbax_shutdown() -> None:
    """Drops the tracebacks of orbax reads abandoned when a restore fails (its event loop is
    closed by then, or asyncio logs their never-retrieved exceptions); every other unraisable
    exception and asyncio log is reported as before."""
    default = sys.unraisablehook

    def hook(unraisable):
        exc, frames = unraisable.exc_value, []
        tb = getattr(exc, "__traceback__", None)
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        orbax = any("orbax" in f for f in frames) or "orbax" in repr(unraisable.object)
        if orbax or "Event loop is closed" in str(exc):
            return
        default(unraisable)

    sys.unraisablehook = hook

    def orbax_task(record) -> bool:  # asyncio logs abandoned orbax reads' exceptions too
        text = record.getMessage()
        return not ("never retrieved" in text and "orbax" in text)

    std_logging.getLogger("asyncio").addFilter(orbax_task)


def _signum(caught: list[str]) -> int:
    return {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}.get(
        caught[-1] if caught else "", signal.SIGTERM
    )


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM / SIGINT ask the run to save and stop; a second one ends it at once.

    Yields the names of the signals caught; the previous handlers come back on exit.
    """
    stopping.clear()
    caught: list[str] = []

    def handler(signum, frame):
        del frame
        name = signal.Signals(signum).name
        if caught:  # asked twice: stop now, without saving
            print(f"jaxopt-ft: error: {name} again; stopped without saving.", file=sys.stderr)
            os._exit(128 + signum)
        caught.append(name)
        stopping.request()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def invoke(argv: list[str]) -> int:
    """Runs the command line in this process (``argv`` without the program name); its exit code.

    For tests and notebooks: the flags are parsed afresh on every call.
    """
    app.define_help_flags()  # app.run defines --helpfull and friends
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)  # the previous call's override flags hold its config
    saved, sys.argv = sys.argv, ["jaxopt-ft", *argv]  # config_flags reads overrides from it
    try:
        main(_parse_flags(list(sys.argv)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
