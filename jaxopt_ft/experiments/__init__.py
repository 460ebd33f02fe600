"""Experiments: one module per kind, each with ``validate(config)`` and ``run(config, workdir)``.

``run`` returns the report dict (``{"experiment", "dataset", "model", "rows", ...}``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

KINDS = ("train",)


def get(kind: str) -> ModuleType:
    """Returns the experiment module for ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"Unknown experiment {kind!r}; accepted: {', '.join(KINDS)}.")
    return importlib.import_module(f"jaxopt_ft.experiments.{kind}")


__all__ = ["KINDS", "get"]
