"""What the command line prints besides rows: help, a config's keys, a finished run's summary.

Each function returns the text (the CLI prints it), so a test or a notebook can call it.
"""

from __future__ import annotations

import ast
import json
import os
from typing import Any

from jaxopt_ft import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USAGE = (
    "usage: jaxopt-ft [COMMAND] --config=configs/<file>.py[:arg] --workdir=DIR "
    "[--config.<key>=value ...]"
)
COMMANDS = {
    "train": "(the default) run the config's experiment in DIR, resuming what is there",
    "describe": "every key of --config: its value and meaning (also: --config=FILE --help)",
    "summary": "what --workdir holds: experiment, phases and checkpoints, metrics, report",
    "evaluate": "a run's checkpoint on --split (default test); --phase when it has several",
    "help": "this text (also -h, --help; --helpfull lists every flag)",
}
EXIT_CODES = (
    "exit codes: 0 done; 2 bad input (one line on stderr, the workdir untouched); 3 the model "
    "ended non-finite; 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint"
)


def configs_dir() -> str:
    """``./configs`` when it exists, else the one beside the installed package."""
    here = os.path.join(os.getcwd(), "configs")
    return here if os.path.isdir(here) else os.path.join(ROOT, "configs")


def config_summaries(folder: str) -> list[tuple[str, str]]:
    """``(file name, first docstring line)`` of every config file in ``folder``.

    The files are parsed, not run: a broken one is listed as such.
    """
    out = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".py") or name.startswith("_"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
        except (OSError, SyntaxError, ValueError):
            doc = "(cannot be read)"
        out.append((name, doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def general_help() -> str:
    """The text of ``jaxopt-ft --help``."""
    from jaxopt_ft import data, experiments, models

    folder = configs_dir()
    configs = config_summaries(folder)
    width = max((len(n) for n, _ in configs), default=0)
    lines = [
        "jaxopt-ft: prune, quantize, fine-tune and train JAX/Flax models from a config file.",
        "",
        USAGE,
        "",
        "commands:",
        *(f"  {name:<9} {text}" for name, text in COMMANDS.items()),
        "",
        "flags: --config=FILE[:arg]  --workdir=DIR  --config.<key>=value  --quick  "
        "--[no]progress  --allow_config_change",
        "short run: --quick cuts every phase of any config to 20 steps (a smoke run); "
        "--config.train.steps=N sets the training phase, and each config's docstring names "
        "the keys of its other phases (see `describe`).",
        "",
        f"configs ({os.path.relpath(folder)}/):",
        *(f"  {name:<{width}}  {doc}" for name, doc in configs),
        "",
        f"experiments (config.experiment): {', '.join(experiments.kinds())}",
        f"models (config.model.name): {', '.join(models.NAMES)}",
        f"datasets (config.dataset.name): {', '.join(data.BUILTIN)} built in; any other TFDS "
        "dataset prepared in config.dataset.data_dir",
        "",
        EXIT_CODES,
    ]
    return "\n".join(lines)


def _value(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def describe(settings: Any) -> str:
    """Every key of a parsed config: ``key = value  # meaning``, sections in order."""
    from jaxopt_ft import models
    from jaxopt_ft.experiments import fields

    rows = []
    for key, _, doc in fields.describe(type(settings)):
        rows.append((key, _value(settings, key), doc))
        if key == "model.name":
            accepted = models.fields(settings.model.name)
            for opt, value in settings.model.options.items():
                rows.append((f"model.{opt}", value, f"option of model {settings.model.name!r}"))
            rest = [o for o in accepted if o not in settings.model.options]
            if rest:
                rows.append(("model.<option>", "", f"also accepted: {', '.join(rest)}"))
    width = max(len(k) + len(repr(v)) for k, v, _ in rows) + 3
    return "\n".join(
        f"{f'{k} = {v!r}':<{width}}  # {doc}" if k != "model.<option>" else f"{k:<{width}}  # {doc}"
        for k, v, doc in rows
    )


def _phases(workdir: str) -> list[tuple[str, int | None]]:
    """``(phase, latest checkpoint step)`` of every phase with a checkpoint folder."""
    root = os.path.join(workdir, "checkpoints")
    out = []
    for phase in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        steps = [int(s) for s in os.listdir(os.path.join(root, phase)) if s.isdigit()]
        out.append((phase, max(steps) if steps else None))
    return out


def summary(workdir: str | None) -> str:
    """A finished (or interrupted) run's summary: what its workdir holds.

    Raises:
      ValueError: ``workdir`` is missing or holds no run.
    """
    from jaxopt_ft import loop

    if not workdir or not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir!r} is not a directory; pass a run's workdir.")
    config = workdir_lib.read_config(workdir)
    if config is None:
        raise ValueError(
            f"--workdir={workdir!r} holds no run (no readable config.json); pass the workdir "
            "of a run started with `jaxopt-ft train`."
        )
    model = config.get("model", {})
    lines = [
        f"workdir: {workdir}",
        f"experiment: {config.get('experiment', 'train')}   dataset: "
        f"{config.get('dataset', {}).get('name')}   model: {model.get('name')} "
        + json.dumps({k: v for k, v in model.items() if k != "name"}),
    ]
    last: dict[str, dict] = {}
    for rec in loop.read_metrics(os.path.join(workdir, "metrics.jsonl")):
        last[rec.get("phase", "train")] = rec
    for phase, step in _phases(workdir) or [(p, None) for p in last]:
        rec = last.get(phase, {})
        loss = rec.get("loss")
        lines.append(
            f"phase {phase}: checkpoint at step {step}; last logged step {rec.get('step')}, "
            f"loss {loss if loss is None else round(loss, 4)}"
        )
    report = os.path.join(workdir, "report.md")
    if os.path.exists(report):
        with open(report) as f:
            lines += ["", f.read().rstrip()]
    else:
        lines.append("no report yet (the run has not finished): run the same command to resume")
    return "\n".join(lines)
