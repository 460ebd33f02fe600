"""Every experiment's settings: frozen dataclasses with the defaults, checks and meanings.

Config files start from :func:`base_config` (``base_config("compress")``), which is built from
these defaults, and change what they need; the experiments read the config once into the
kind's settings class (``experiments.parse``) and never see the ConfigDict again. This module
loads without jax (config files import it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import ml_collections

from jaxopt_ft.experiments import fields as f
from jaxopt_ft.experiments.fields import section, setting
from jaxopt_ft.experiments.sections import (
    AugmentStudy,
    BitsSweep,
    Hpo,
    LrRange,
    Multitask,
    PopulationStudy,
    Prune,
    PruneSchedule,
    Quant,
    RecipeSweep,
    SparseTraining,
    SparsitySweep,
    Subset,
    Transfer,
)

# --- sections every experiment has ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dataset:
    name: str = setting("mnist1d", f.text(allow_empty=False), "TFDS dataset name")
    data_dir: str = setting("", f.text(), "TFDS data dir ('' = the default)")
    in_memory_mb: float = setting(
        1024.0, f.number(0.0), "splits up to this size (float32 MiB) in memory, larger from disk"
    )
    threads: int = setting(1, f.integer(0), "grain threads reading batches (0 = inline)")
    workers: int = setting(0, f.integer(0), "grain worker processes (0 = none)")

    def check(self, key) -> None:
        if not self.data_dir:
            return
        where = self.data_dir  # the folder itself, or the nearest one that would hold it
        while not os.path.exists(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where) or "."
        if not os.path.isdir(where):
            problem = (
                "is not a directory" if where == self.data_dir else f"is under a file {where!r}"
            )
        elif not os.access(where, os.R_OK | os.X_OK | (0 if where == self.data_dir else os.W_OK)):
            problem = (
                "is not readable" if where == self.data_dir else f"cannot be created in {where!r}"
            )
        else:
            return
        raise ValueError(
            f"{key('data_dir')}={self.data_dir!r} {problem}; pass a usable TFDS data dir (a "
            "folder), or '' for the default."
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Model:
    """The model's name; every other key of the section is an option of that model."""

    EXTRA: ClassVar[str] = "options"
    name: str = setting("cnn", f.choice(f.lazy("jaxopt_ft.models", "NAMES")), "model name")
    options: dict = dataclasses.field(default_factory=dict, metadata={"doc": "model options"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optimizer:
    name: str = setting("adam", f.OPTIMIZER, "optax optimizer")
    learning_rate: float = setting(1e-2, f.RATE, "peak learning rate")
    momentum: float = setting(0.9, f.number(0.0, 1.0, high_open=True), "momentum, nesterov")
    b1: float = setting(0.9, f.number(0.0, 1.0, high_open=True), "adam(w) first moment decay")
    b2: float = setting(0.999, f.number(0.0, 1.0, high_open=True), "adam(w) second moment")
    eps: float = setting(1e-8, f.POSITIVE, "stability term of adaptive methods")
    decay: float = setting(0.9, f.number(0.0, 1.0, high_open=True), "rmsprop decay")
    weight_decay: float = setting(1e-4, f.number(0.0), "adamw decoupled weight decay")
    weight_decay_rules: tuple = setting(
        (), f.rules(f.boolean()), "((regex, bool), ...) leaves adamw decays; () = kernels"
    )
    clip_norm: float = setting(0.0, f.number(0.0, note=" (0 = no clipping)"), "global norm clip")
    accumulate_steps: int = setting(
        1, f.integer(1, note=" (1 = no accumulation)"), "micro-batches per update"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    name: str = setting("constant", f.SCHEDULE, "learning-rate schedule")
    warmup_steps: int = setting(0, f.integer(0), "warmup_cosine warm-up steps")
    decay_rate: float = setting(0.01, f.number(0.0, 1.0, low_open=True), "final / initial rate")
    boundaries: tuple = setting(
        (0.5, 0.75), f.sequence(f.number(0.0, 1.0, low_open=True, high_open=True)), "piecewise"
    )
    scale: float = setting(0.1, f.POSITIVE, "piecewise factor at each boundary")
    end_value: float = setting(0.0, f.number(0.0), "final rate of the cosine schedules")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Train:
    steps: int = setting(1000, f.integer(1), "training steps (micro-batches)")
    batch_size: int = setting(100, f.integer(1), "global batch size")
    log_every: int = setting(100, f.integer(1), "steps between metrics.jsonl records")
    label_smoothing: float = setting(0.0, f.number(0.0, 1.0, high_open=True), "cross-entropy")
    ema_decay: float = setting(
        0.0, f.number(0.0, 1.0, high_open=True, note=" (0 = no EMA)"), "parameter EMA decay"
    )
    nan_policy: str = setting("stop", f.choice(("skip", "stop")), "after non-finite updates")
    max_consecutive_nonfinite: int = setting(10, f.integer(1), "skipped updates that stop a run")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Augment:
    ops: str = setting("", f.text(), "on-device augmentation, e.g. 'crop(pad=1), rotate(10)'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Eval:
    batch_size: int = setting(1000, f.integer(1), "evaluation batch size")
    timing_repeats: int = setting(20, f.integer(1), "rounds of side-by-side inference timing")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Checkpoint:
    every_steps: int = setting(1000, f.integer(0, note=" (0 = at the end)"), "save cadence")
    max_to_keep: int = setting(3, f.integer(1), "checkpoints kept per phase")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parallel:
    mode: str = setting("none", f.choice(("none", "sharding", "pmap")), "data parallelism")
    fsdp: bool = setting(False, f.boolean(), "shard params and optimizer state (sharding)")
    devices: int = setting(0, f.integer(0, note=" (0 = every device)"), "devices to use")

    def check(self, key) -> None:
        if self.fsdp and self.mode != "sharding":
            raise ValueError(
                f"{key('fsdp')}=True needs {key('mode')}='sharding', but {key('mode')}="
                f"{self.mode!r}. Fix: set {key('mode')}='sharding' or {key('fsdp')}=False."
            )
        if self.mode == "none" and self.devices > 1:
            raise ValueError(
                f"{key('devices')}={self.devices} needs a data-parallel mode, but {key('mode')}"
                f"='none'. Fix: set {key('mode')}='sharding' or 'pmap'."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Common:
    """The keys every experiment shares."""

    experiment: str = setting("train", f.text(), "experiment kind")
    seed: int = setting(0, f.integer(0), "the only seed")
    dataset: Dataset = section(Dataset)
    model: Model = section(Model)
    optimizer: Optimizer = section(Optimizer)
    schedule: Schedule = section(Schedule)
    train: Train = section(Train)
    augment: Augment = section(Augment)
    eval: Eval = section(Eval)
    checkpoint: Checkpoint = section(Checkpoint)
    parallel: Parallel = section(Parallel)

    def check(self, key) -> None:
        k = self.optimizer.accumulate_steps
        if self.train.steps % k:
            raise ValueError(
                f"train.steps={self.train.steps} is not a multiple of optimizer.accumulate_steps="
                f"{k} (train.steps counts micro-batches); make it one."
            )


# --- one settings class per experiment kind ----------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings(Common):
    experiment: str = setting("train", f.text(), "experiment kind")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressSettings(Common):
    experiment: str = setting("compress", f.text(), "experiment kind")
    prune: Prune = section(Prune)
    quant: Quant = section(Quant)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparsitySweepSettings(Common):
    experiment: str = setting("sparsity_sweep", f.text(), "experiment kind")
    prune: PruneSchedule = section(PruneSchedule)
    sweep: SparsitySweep = section(SparsitySweep)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseTrainingSettings(Common):
    experiment: str = setting("sparse_training", f.text(), "experiment kind")
    sparse: SparseTraining = section(SparseTraining)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BitsSweepSettings(Common):
    experiment: str = setting("bits_sweep", f.text(), "experiment kind")
    quant: Quant = section(Quant)
    sweep: BitsSweep = section(BitsSweep)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSettings(Common):
    experiment: str = setting("sweep", f.text(), "experiment kind")
    sweep: RecipeSweep = section(RecipeSweep)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentSettings(Common):
    experiment: str = setting("augment", f.text(), "experiment kind")
    augment: AugmentStudy = section(AugmentStudy)
    subset: Subset = section(Subset)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferSettings(Common):
    experiment: str = setting("transfer", f.text(), "experiment kind")
    transfer: Transfer = section(Transfer)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultitaskSettings(Common):
    experiment: str = setting("multitask", f.text(), "experiment kind")
    multitask: Multitask = section(Multitask)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HpoSettings(Common):
    experiment: str = setting("hpo", f.text(), "experiment kind")
    hpo: Hpo = section(Hpo)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PopulationSettings(Common):
    experiment: str = setting("population", f.text(), "experiment kind")
    population: PopulationStudy = section(PopulationStudy)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LrRangeSettings(Common):
    experiment: str = setting("lr_range", f.text(), "experiment kind")
    lr_range: LrRange = section(LrRange)


SETTINGS: dict[str, type] = {
    "train": TrainSettings,
    "compress": CompressSettings,
    "sparsity_sweep": SparsitySweepSettings,
    "sparse_training": SparseTrainingSettings,
    "bits_sweep": BitsSweepSettings,
    "sweep": SweepSettings,
    "augment": AugmentSettings,
    "transfer": TransferSettings,
    "multitask": MultitaskSettings,
    "hpo": HpoSettings,
    "population": PopulationSettings,
    "lr_range": LrRangeSettings,
}


def base_config(kind: str = "train") -> ml_collections.ConfigDict:
    """Every key of experiment ``kind`` at its default; config files start from this."""
    if kind not in SETTINGS:
        raise ValueError(f"Unknown experiment {kind!r}; accepted: {', '.join(SETTINGS)}.")
    return f.to_config(SETTINGS[kind]())


def select_tasks(
    config: ml_collections.ConfigDict, tasks: Mapping[str, Mapping[str, Any]], arg: str | None
) -> None:
    """Sets ``config.multitask.tasks`` (and equal static weights) to a subset of ``tasks``.

    Args:
        config: a ``base_config("multitask")``.
        tasks: ``{name: {"kind", "num_classes", "loss"}}``: the tasks the config file offers.
        arg: the config file's ``:arg``, a comma-separated subset of ``tasks`` (None: all).

    Raises:
        ValueError: a task name in ``arg`` that ``tasks`` does not offer.
    """
    names = [n.strip() for n in arg.split(",") if n.strip()] if arg else list(tasks)
    unknown = [n for n in names if n not in tasks]
    if unknown or not names:
        raise ValueError(
            f"The config argument {arg!r} names unknown task(s) {unknown}; pick a "
            f"comma-separated subset of {', '.join(tasks)}."
        )
    # Unsorted, so that tasks keep the order they are declared in.
    config.multitask.tasks = ml_collections.ConfigDict(
        {n: dict(tasks[n]) for n in names}, sort_keys=False
    )
    config.multitask.static_weights = ml_collections.ConfigDict(
        dict.fromkeys(names, 1.0), sort_keys=False
    )
