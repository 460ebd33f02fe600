"""Experiments: one module per kind, each with ``validate(settings)`` and ``run(settings, ...)``.

The registry below names every kind with its module and its settings class
(`jaxopt_ft.experiments.settings`). :func:`parse` reads a config into the settings of its
``experiment`` kind once; the kind's module then works from those typed settings only. ``run``
returns the report dict (``{"experiment", "dataset", "model", "rows", ...}``). Importing this
package does not import jax (config files import its settings).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from jaxopt_ft.experiments import fields
from jaxopt_ft.experiments.settings import SETTINGS

REGISTRY: dict[str, str] = {
    "train": "jaxopt_ft.experiments.train",
    "compress": "jaxopt_ft.experiments.compress",
    "sparsity_sweep": "jaxopt_ft.experiments.sparsity_sweep",
    "sparse_training": "jaxopt_ft.experiments.sparse_training",
    "bits_sweep": "jaxopt_ft.experiments.bits_sweep",
    "sweep": "jaxopt_ft.experiments.sweep",
    "augment": "jaxopt_ft.experiments.augment",
    "transfer": "jaxopt_ft.experiments.transfer",
    "multitask": "jaxopt_ft.experiments.multitask",
    "hpo": "jaxopt_ft.experiments.hpo",
    "population": "jaxopt_ft.experiments.population",
    "lr_range": "jaxopt_ft.experiments.lr_range",
}


def kinds() -> tuple[str, ...]:
    """The experiment kinds available."""
    return tuple(REGISTRY)


def _check_kind(kind: Any) -> str:
    if kind not in REGISTRY:
        raise ValueError(
            f"Unknown experiment {kind!r}; accepted: {', '.join(REGISTRY)}. "
            "Set config.experiment to one of them."
        )
    return kind


def get(kind: str) -> ModuleType:
    """The module of experiment ``kind`` (``validate``, ``run``)."""
    return importlib.import_module(REGISTRY[_check_kind(kind)])


def parse(config: Any) -> Any:
    """The config read once into the settings class of its ``experiment`` kind.

    Raises:
      ValueError: an unknown kind, an unknown key or a bad value (named with its key).
    """
    kind = config.get("experiment", "train") if hasattr(config, "get") else None
    return fields.parse(SETTINGS[_check_kind(kind)], config)


def prepare(config: Any) -> tuple[ModuleType, Any]:
    """Parses ``config`` and validates it against the data and the library, before any work.

    Returns:
      ``(module, settings)``: the kind's module (``module.run(settings, workdir)``) and its
      settings.

    Raises:
      ValueError: any bad value, named with its key.
    """
    settings = parse(config)
    module = get(settings.experiment)
    module.validate(settings)
    return module, settings


__all__ = ["REGISTRY", "get", "kinds", "parse", "prepare"]
