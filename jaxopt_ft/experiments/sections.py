"""The settings sections of particular experiments: pruning, quantization, sweeps, transfer and
multi-task learning (the sections every experiment shares are in
`jaxopt_ft.experiments.settings`). Loads without jax.
"""

from __future__ import annotations

import dataclasses
import importlib

from jaxopt_ft.experiments import fields as f
from jaxopt_ft.experiments.fields import setting

# --- pruning and quantization ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneSchedule:
    """Gradual pruning with fine-tuning from a dense model (Zhu & Gupta's cubic ramp)."""

    rules: tuple = setting(
        (), f.rules(f.boolean()), "((regex, bool), ...) prunable params; () = kernels"
    )
    exclude_first: bool = setting(True, f.boolean(), "keep the first layer dense")
    exclude_last: bool = setting(False, f.boolean(), "keep the last layer dense")
    steps: int = setting(1500, f.integer(1), "fine-tuning steps, pruning included")
    begin_fraction: float = setting(0.0, f.FRACTION, "pruning starts at this fraction of steps")
    end_fraction: float = setting(0.5, f.FRACTION, "and reaches its target at this fraction")
    frequency: int = setting(50, f.integer(1), "steps between mask updates")
    learning_rate: float = setting(3e-3, f.RATE, "fine-tuning learning rate")
    schedule: str = setting("cosine", f.SCHEDULE, "fine-tuning rate schedule")

    def check(self, key) -> None:
        if self.begin_fraction > self.end_fraction:
            raise ValueError(
                f"{key('begin_fraction')}={self.begin_fraction} must not exceed "
                f"{key('end_fraction')}={self.end_fraction}; pruning starts before it ends."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Prune(PruneSchedule):
    """``compress``: unstructured target, sparse export and structured (channel) pruning."""

    sparsity: float = setting(0.9, f.SPARSITY, "fraction of prunable weights at zero")
    scorer: str = setting(
        "magnitude", f.choice(f.lazy("jaxopt_ft.prune", "SCORERS")), "weight score"
    )
    scope: str = setting("global", f.choice(f.lazy("jaxopt_ft.prune", "SCOPES")), "ranking scope")
    distribution: str = setting(
        "uniform", f.choice(f.lazy("jaxopt_ft.prune", "DISTRIBUTIONS")), "per-layer targets"
    )
    export_format: str = setting(
        "bitmask", f.choice(f.lazy("jaxopt_ft.prune", "EXPORT_FORMATS")), "sparse export"
    )
    structured_sparsity: float = setting(0.5, f.SPARSITY, "fraction of each layer's units removed")
    structured_rules: tuple = setting(
        (), f.rules(f.SPARSITY), "((regex over unit groups, fraction), ...) overrides"
    )
    structured_norm: str = setting(
        "l2", f.choice(f.lazy("jaxopt_ft.prune", "NORMS")), "unit score norm"
    )
    structured_steps: int = setting(500, f.integer(0), "fine-tuning steps of the compact model")
    structured_learning_rate: float = setting(3e-3, f.RATE, "its learning rate")

    def check(self, key) -> None:
        super().check(key)
        try:
            importlib.import_module("jaxopt_ft.prune").check_scope(self.scope, self.distribution)
        except ValueError as e:
            raise ValueError(f"{key('scope')} / {key('distribution')}: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseTraining:
    """``sparse_training``: every method trains from the same initialisation for train.steps."""

    rules: tuple = setting(
        (), f.rules(f.boolean()), "((regex, bool), ...) prunable params; () = kernels"
    )
    exclude_first: bool = setting(True, f.boolean(), "keep the first layer dense")
    exclude_last: bool = setting(False, f.boolean(), "keep the last layer dense")
    methods: tuple = setting(
        ("dense", "gradual", "static", "set", "rigl", "ste"),
        f.sequence(f.choice(f.lazy("jaxopt_ft.experiments.sparse_training", "METHODS"))),
        "training methods",
    )
    sparsities: tuple = setting((0.8, 0.9, 0.95), f.sequence(f.SPARSITY), "targets")
    distribution: str = setting(
        "erk", f.choice(f.lazy("jaxopt_ft.prune", "DISTRIBUTIONS")), "per-layer sparsities"
    )
    fraction: float = setting(
        0.3, f.number(0.0, 1.0, low_open=True, high_open=True), "SET/RigL drop/regrow fraction"
    )
    frequency: int = setting(100, f.integer(1), "steps between mask updates")
    update_end_fraction: float = setting(0.75, f.FRACTION, "SET/RigL stop updating here")
    begin_fraction: float = setting(0.0, f.FRACTION, "gradual pruning starts here")
    end_fraction: float = setting(0.5, f.FRACTION, "and reaches its target here")

    def check(self, key) -> None:
        if self.begin_fraction > self.end_fraction:
            raise ValueError(
                f"{key('begin_fraction')}={self.begin_fraction} must not exceed "
                f"{key('end_fraction')}={self.end_fraction}; pruning starts before it ends."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quant:
    """Quantized rows: PTQ, weights-only, QAT (and pruned + QAT)."""

    bits: int = setting(8, f.BITS, "PTQ weight width; activation width of every row")
    qat_bits: int = setting(4, f.BITS, "QAT weight width")
    first_last_bits: int = setting(
        8, lambda v, key: v if v == 0 else f.BITS(v, f"{key} (or 0)"), "first/last layer width"
    )
    qat_steps: int = setting(100, f.integer(0), "QAT fine-tuning steps (0 = PTQ)")
    learning_rate: float = setting(1e-3, f.RATE, "QAT learning rate")
    calibration_batches: int = setting(10, f.integer(1), "batches setting activation ranges")
    observer: str = setting(
        "minmax", f.choice(f.lazy("jaxopt_ft.quant", "OBSERVERS")), "range observer"
    )


# --- sweeps, studies, transfer, multi-task -----------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparsitySweep:
    methods: tuple = setting(
        ("magnitude-layer", "magnitude-global", "magnitude-erk", "random", "saliency"),
        f.sequence(f.choice(f.lazy("jaxopt_ft.experiments.sparsity_sweep", "METHODS"))),
        "pruning methods",
    )
    sparsities: tuple = setting((0.5, 0.75, 0.9, 0.95), f.sequence(f.SPARSITY), "targets")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BitsSweep:
    methods: tuple = setting(
        ("ptq_weights", "ptq", "qat"),
        f.sequence(f.choice(f.lazy("jaxopt_ft.experiments.bits_sweep", "METHODS"))),
        "quantization methods",
    )
    bits: tuple = setting((2, 3, 4, 6, 8), f.sequence(f.BITS), "weight widths")


_LEARNING_RATES = {
    "sgd": 1.0,
    "momentum": 0.1,
    "nesterov": 0.1,
    "adagrad": 0.3,
    "rmsprop": 1e-2,
    "adam": 1e-2,
    "adamw": 1e-2,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecipeSweep:
    optimizers: tuple = setting(tuple(_LEARNING_RATES), f.sequence(f.OPTIMIZER), "")
    schedules: tuple = setting(
        ("constant", "exponential", "inverse_time", "warmup_cosine"),
        f.sequence(f.SCHEDULE),
        "",
    )
    learning_rates: dict = setting(_LEARNING_RATES, f.mapping(f.RATE), "peak rate per optimizer")
    warmup_fraction: float = setting(0.05, f.number(0.0, 0.5), "warm-up share of each run")
    batch_sizes: tuple = setting((25, 50, 100, 200, 400, 800), f.sequence(f.integer(1)), "")
    batch_optimizer: str = setting("momentum", f.OPTIMIZER, "batch-size sweep's")
    batch_schedule: str = setting("warmup_cosine", f.SCHEDULE, "batch-size sweep's")

    def check(self, key) -> None:
        needed = {*self.optimizers, self.batch_optimizer}
        missing = sorted(n for n in needed if n not in self.learning_rates)
        if missing:
            raise ValueError(
                f"{key('learning_rates')} has no rate for {missing}; add e.g. "
                f"--config.{key('learning_rates')}.{missing[0]}=0.01 to the config."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentStudy:
    """The ``augment`` section of the augmentation study: the ops and the paired seeds."""

    ops: str = setting(
        "crop(pad=1), rotate(degrees=10)", f.text(), "the augmented arm's ops (image datasets)"
    )
    seeds: tuple = setting(
        (0, 1, 2, 3, 4),
        f.sequence(f.integer(0), min_len=2, example="(0, 1, 2, 3, 4)"),
        "paired seeds (>= 2: the standard deviation needs two)",
    )

    def check(self, key) -> None:
        if not self.ops:
            raise ValueError(
                f"{key('ops')} is empty: the 'augment' arm would equal 'no_augment'; set e.g. "
                f"--config.{key('ops')}='crop(pad=1)'."
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Subset:
    fraction: float = setting(0.1, f.number(0.0, 1.0, low_open=True), "training split share")


_CLASSES = f.sequence(f.integer(0))
_STRINGS = f.sequence(f.text(allow_empty=False))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Transfer:
    pretrain_classes: tuple = setting((0, 1, 2, 3, 4), _CLASSES, "classes of the pretraining")
    target_classes: tuple = setting((5, 6, 7, 8, 9), _CLASSES, "classes adapted to")
    per_class: int = setting(20, f.integer(1), "labelled examples per target class")
    seeds: tuple = setting((0, 1, 2), f.sequence(f.integer(0)), "few-shot draws")
    modes: tuple = setting(
        ("full", "partial", "linear_probe", "features", "lora", "scratch"),
        f.sequence(f.choice(f.lazy("jaxopt_ft.finetune", "MODES"))),
        "fine-tuning modes",
    )
    steps: int = setting(200, f.integer(1), "adaptation steps per mode and seed")
    batch_size: int = setting(50, f.integer(1), "adaptation batch size")
    optimizer: str = setting("adamw", f.OPTIMIZER, "adaptation optimizer")
    learning_rate: float = setting(3e-3, f.number(0.0, 10.0, low_open=True), "adaptation rate")
    scratch_learning_rate: float = setting(1e-2, f.number(0.0, 10.0, low_open=True), "scratch's")
    weight_decay: float = setting(1e-4, f.number(0.0, 1.0), "adamw weight decay")
    lr_mult: dict = setting(
        {"head": 1.0, "trunk": 1.0, "lora": 1.0}, f.mapping(f.POSITIVE), "per-group rate factor"
    )
    dont_load: tuple = setting(("head/.*",), f.sequence(f.text(), min_len=0), "re-initialised")
    partial_rules: tuple = setting(
        (("conv1/.*", "frozen"), ("head/.*", "head"), (".*", "trunk")),
        f.rules(f.text(allow_empty=False), allow_empty=False),
        "freeze rules of mode partial",
    )
    lora_targets: tuple = setting(("conv[123]/kernel",), _STRINGS, "kernels given adapters")
    lora_rank: int = setting(4, f.integer(1), "adapter rank")
    lora_alpha: float = setting(8.0, f.number(0.0, 1e4, low_open=True), "adapter scale")
    features_solver: str = setting("logistic", f.choice(("logistic", "ridge")), "features head")
    features_l2: float = setting(100.0, f.number(0.0, 1e8), "ridge penalty")
    pretrained: str = setting("", f.text(), "checkpoints dir to adapt from ('' = pretrain)")

    def check(self, key) -> None:
        n_shot = self.per_class * len(self.target_classes)
        if self.batch_size > n_shot:
            raise ValueError(
                f"{key('batch_size')}={self.batch_size} exceeds the {n_shot} few-shot examples "
                f"({self.per_class} x {len(self.target_classes)} classes); lower it."
            )


MULTITASK_ROWS = (
    "single_task",
    "equal",
    "static",
    "uncertainty",
    "dwa",
    "gradnorm",
    "pcgrad",
    "alternating",
    "mgda",
    "mgda_ub",
    "cagrad",
    "nash_mtl",
    "imtl",
    "gradvac",
    "graddrop",
    "rlw",
    "aligned_mtl",
    "db_mtl",
    "mmoe",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Multitask:
    tasks: dict = setting(
        {"digit": {"kind": "classification", "num_classes": 10, "loss": "cross_entropy"}},
        f.mapping(f.anything(), allow_empty=False),
        "{name: {kind, num_classes, loss}}",
    )
    rows: tuple = setting(
        ("single_task", "equal", "uncertainty", "dwa", "gradnorm", "pcgrad", "alternating"),
        f.sequence(f.choice(MULTITASK_ROWS)),
        "single_task and the weighting methods",
    )
    static_weights: dict = setting({}, f.mapping(f.number(0.0)), "weights of row static")
    dwa_temperature: float = setting(2.0, f.POSITIVE, "DWA softmax temperature")
    dwa_window: int = setting(0, f.integer(0, note=" (0 = one epoch)"), "steps per DWA window")
    gradnorm_alpha: float = setting(1.5, f.number(0.0), "GradNorm restoring force")
    gradnorm_lr: float = setting(0.025, f.POSITIVE, "GradNorm weight learning rate")
    alternate: str = setting(
        "round_robin", f.choice(("round_robin", "sampled")), "task order of alternating"
    )
    mgda_normalize: str = setting(
        "none", f.choice(("none", "l2", "loss", "loss+")), "MGDA gradient normalisation"
    )
    cagrad_alpha: float = setting(0.5, f.number(0.0), "CAGrad ball radius c")
    cagrad_rescale: int = setting(1, f.integer(0, 2), "CAGrad rescaling (0, 1, 2)")
    nash_max_norm: float = setting(1.0, f.number(0.0), "Nash-MTL trunk clip (0 = none)")
    gradvac_beta: float = setting(0.5, f.number(0.0, 1.0, low_open=True), "GradVac EMA rate")
    graddrop_leak: float = setting(0.0, f.FRACTION, "GradDrop leak")
    db_beta: float = setting(0.9, f.number(0.0, 1.0, high_open=True), "DB-MTL EMA decay")
    db_beta_sigma: float = setting(0.0, f.number(0.0), "DB-MTL decay exponent")
    num_experts: int = setting(3, f.integer(1), "experts of row mmoe")
    similarity_from: str = setting("equal", f.text(), "row whose gradient similarity is kept")
    similarity_every: int = setting(10, f.integer(1), "steps between similarity measurements")

    def check(self, key) -> None:
        if self.similarity_from not in self.rows or self.similarity_from == "single_task":
            rows = [r for r in self.rows if r != "single_task"]
            raise ValueError(
                f"{key('similarity_from')}={self.similarity_from!r} must be one of the "
                f"multi-task rows {rows}."
            )


# --- hyperparameter search ---------------------------------------------------------------------

SEARCH_PARAMETERS = (
    "optimizer",
    "learning_rate",
    "weight_decay",
    "momentum",
    "batch_size",
    "schedule",
    "warmup_fraction",
    "label_smoothing",
)
POPULATION_PARAMETERS = ("learning_rate", "weight_decay", "momentum", "label_smoothing")


def _space(parameters: tuple[str, ...]) -> f.Check:
    def check(value, key):
        value = f.mapping(f.anything(), allow_empty=False)(value, key)
        try:
            importlib.import_module("jaxopt_ft.hpo").check_space(value, parameters)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        return value

    return check


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hpo:
    """The ``hpo`` experiment: an Optuna study shared by every worker started on its storage."""

    trials: int = setting(30, f.integer(1), "finished trials of the study, all workers together")
    space: dict = setting(
        {
            "optimizer": ("choice", ("momentum", "adam", "adamw")),
            "learning_rate": ("log", 1e-3, 1.0),
            "schedule": ("choice", ("constant", "warmup_cosine")),
            "label_smoothing": ("uniform", 0.0, 0.2),
        },
        _space(SEARCH_PARAMETERS),
        "{parameter: (kind, ...)}: ('log'|'uniform'|'int', low, high) or ('choice', values)",
    )
    sampler: str = setting("tpe", f.choice(("tpe", "random", "cmaes", "grid")), "Optuna sampler")
    pruner: str = setting(
        "asha", f.choice(("asha", "median", "hyperband", "none")), "early stopping of trials"
    )
    storage: str = setting("", f.text(), "Optuna storage URL ('' = sqlite:///<workdir>/study.db)")
    study_name: str = setting("hpo", f.text(allow_empty=False), "study shared by the workers")
    heartbeat_s: int = setting(10, f.integer(1), "a dead worker's trial fails after 2x this")
    validation_fraction: float = setting(
        0.1, f.number(0.0, 0.5, low_open=True), "held-out share of train (never test)"
    )
    eval_every: int = setting(250, f.integer(1), "steps between validation reports to the pruner")
    lr_scaling: str = setting(
        "linear", f.choice(("none", "linear", "sqrt")), "rate at another batch size"
    )
    evaluator: str = setting(
        "sequential", f.choice(("sequential", "population")), "one trial at a time or K vmapped"
    )
    population: int = setting(8, f.integer(1), "trials per vmapped population (evaluator)")
    retrain: bool = setting(True, f.boolean(), "retrain the best trial on all of train, test it")

    def check(self, key) -> None:
        if self.evaluator == "population":
            bad = sorted(set(self.space) - set(POPULATION_PARAMETERS))
            if bad:
                raise ValueError(
                    f"{key('evaluator')}='population' varies only {list(POPULATION_PARAMETERS)} "
                    f"within one compiled step; {key('space')} also has {bad}. Remove them or "
                    f"set {key('evaluator')}='sequential'."
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PopulationStudy:
    """The ``population`` experiment: K configurations of one optimizer family, vmapped."""

    size: int = setting(16, f.integer(1), "configurations (before seeds)")
    draw: str = setting("grid", f.choice(("grid", "random")), "a grid or a random draw of space")
    space: dict = setting(
        {"learning_rate": ("log", 1e-2, 1.0), "momentum": ("uniform", 0.5, 0.95)},
        _space(POPULATION_PARAMETERS),
        "{parameter: spec}; grid: size = points per axis ** axes",
    )
    seeds: tuple = setting((0,), f.sequence(f.integer(0)), "each configuration once per seed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LrRange:
    """The ``lr_range`` experiment: Smith's learning-rate range test (`jaxopt_ft.lr_range`)."""

    min_lr: float = setting(1e-5, f.POSITIVE, "first rate of the exponential ramp")
    max_lr: float = setting(10.0, f.POSITIVE, "last rate of the ramp")
    steps: int = setting(300, f.integer(10), "steps of the ramp (it stops early on divergence)")
    beta: float = setting(0.98, f.number(0.0, 1.0, high_open=True), "loss smoothing (EMA)")
    diverge: float = setting(4.0, f.number(1.0, low_open=True), "stop at this x smoothed minimum")

    def check(self, key) -> None:
        if not self.min_lr < self.max_lr:
            raise ValueError(
                f"{key('min_lr')}={self.min_lr!r} must be below {key('max_lr')}={self.max_lr!r}; "
                "the range is empty or inverted."
            )
