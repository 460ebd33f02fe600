"""jaxopt_ft: make JAX/Flax models smaller, faster and better adapted.

Pure functions over Flax parameter pytrees, composed with optax and jit-compiled.
"""

from jaxopt_ft import checkpoint as checkpoint
from jaxopt_ft import data as data
from jaxopt_ft import finetune as finetune
from jaxopt_ft import models as models
from jaxopt_ft import multitask as multitask
from jaxopt_ft import optim as optim
from jaxopt_ft import parallel as parallel
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
    "finetune",
    "models",
    "multitask",
    "optim",
    "parallel",
    "prune",
    "quant",
    "report",
    "timing",
    "train",
    "tree",
]
