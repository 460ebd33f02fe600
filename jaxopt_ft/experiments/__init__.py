"""Experiments: one module per kind, each with ``validate(config)`` and ``run(config, workdir)``.

``run`` returns the report dict (``{"experiment", "dataset", "model", "rows", ...}``). A kind is
the name of a module in this package (``train``, ``compress``, ...); ``common`` holds the
config helpers they share.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_NOT_KINDS = {"common"}


def kinds() -> tuple[str, ...]:
    """The experiment kinds available (module names of this package)."""
    return tuple(
        sorted(
            m.name
            for m in pkgutil.iter_modules(__path__)
            if not m.name.startswith("_") and m.name not in _NOT_KINDS
        )
    )


def get(kind: str) -> ModuleType:
    """Returns the experiment module for ``kind``."""
    available = kinds()
    if kind not in available:
        raise ValueError(
            f"Unknown experiment {kind!r}; accepted: {', '.join(available)}. "
            "Set config.experiment to one of them."
        )
    return importlib.import_module(f"jaxopt_ft.experiments.{kind}")


__all__ = ["get", "kinds"]
