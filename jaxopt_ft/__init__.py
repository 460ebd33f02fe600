"""jaxopt_ft: make JAX/Flax models smaller, faster and better adapted.

Pure functions over Flax parameter pytrees, composed with optax and jit-compiled. Subpackages
load on first use (``jaxopt_ft.prune``), so config files, which import only the experiment
settings, load without jax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxopt_ft import checkpoint as checkpoint
    from jaxopt_ft import data as data
    from jaxopt_ft import experiments as experiments
    from jaxopt_ft import finetune as finetune
    from jaxopt_ft import hpo as hpo
    from jaxopt_ft import loop as loop
    from jaxopt_ft import lr_range as lr_range
    from jaxopt_ft import models as models
    from jaxopt_ft import multitask as multitask
    from jaxopt_ft import ops as ops
    from jaxopt_ft import optim as optim
    from jaxopt_ft import parallel as parallel
    from jaxopt_ft import population as population
    from jaxopt_ft import prune as prune
    from jaxopt_ft import quant as quant
    from jaxopt_ft import report as report
    from jaxopt_ft import timing as timing
    from jaxopt_ft import train as train
    from jaxopt_ft import tree as tree

__version__ = "0.1.0"

__all__ = [
    "checkpoint",
    "data",
    "experiments",
    "finetune",
    "hpo",
    "loop",
    "lr_range",
    "models",
    "multitask",
    "ops",
    "optim",
    "parallel",
    "population",
    "prune",
    "quant",
    "report",
    "timing",
    "train",
    "tree",
]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"jaxopt_ft.{name}")
    raise AttributeError(f"module 'jaxopt_ft' has no attribute {name!r}")
