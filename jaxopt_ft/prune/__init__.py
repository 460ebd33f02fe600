"""Pruning: masks, scores, schedules x maskers in one optax wrapper (pruning, N:M, static and
dynamic sparse training), structured compaction.

Masks are bool pytrees with exactly the params' structure (True = keep). The usual flow::

  schedule = prune.polynomial(final_sparsity=0.9, begin_step=1000, end_step=5000)
  tx = prune.wrap(optax.adam(1e-3), schedule, prune.magnitude())
  ...train...
  params = prune.finalize(params, prune.find_masks(opt_state))
  print(prune.format_summary(prune.summary(params, prune.nonzero_masks(params))))
  size = prune.export_sparse(params, "model.npz")

Structured pruning removes whole units and shrinks the model::

  masks = prune.structured_masks(model, params, sparsity=0.5)
  small = prune.compact(model, params, masks)   # small.model, small.params
"""

from jaxopt_ft.prune.allocate import (
    DISTRIBUTIONS,
    SCOPES,
    check_scope,
    check_sparsity,
    compute_masks,
    layer_densities,
    masks_from_scores,
    nm_masks,
    num_removed,
)
from jaxopt_ft.prune.export import FORMATS as EXPORT_FORMATS
from jaxopt_ft.prune.export import (
    export_sparse,
    finalize,
    format_summary,
    load_sparse,
    summary,
)
from jaxopt_ft.prune.flops import (
    forward_flops,
    kernel_uses,
    step_flops,
)
from jaxopt_ft.prune.maskers import (
    Masker,
    MaskInputs,
    drop_and_grow,
    fixed,
    magnitude,
    nm,
    random,
    rigl,
    saliency,
    set_,
    static,
)
from jaxopt_ft.prune.masks import (
    DEFAULT_RULES,
    apply_masks,
    check_masks,
    dense_masks,
    mask_sparsity,
    nonzero_masks,
    prunable_paths,
    select_prunable,
)
from jaxopt_ft.prune.schedules import (
    SparsitySchedule,
    check_fraction,
    constant,
    cosine,
    iterative_sparsities,
    lottery_round,
    one_shot,
    polynomial,
    update_steps,
)
from jaxopt_ft.prune.scores import (
    SCORERS,
    magnitude_scores,
    random_scores,
    saliency_scores,
    snip_scores,
)
from jaxopt_ft.prune.ste import (
    ste_apply_fn,
    ste_masked,
)
from jaxopt_ft.prune.structured import (
    NORMS,
    Compacted,
    compact,
    structured_masks,
    structured_sparsity,
    unit_groups,
    unit_scores,
)
from jaxopt_ft.prune.wrapper import (
    PruneState,
    find_masks,
    find_states,
    replace_masks,
    wrap,
)

__all__ = [
    "Compacted",
    "DEFAULT_RULES",
    "DISTRIBUTIONS",
    "EXPORT_FORMATS",
    "MaskInputs",
    "Masker",
    "NORMS",
    "PruneState",
    "SCOPES",
    "SCORERS",
    "SparsitySchedule",
    "apply_masks",
    "check_fraction",
    "check_masks",
    "check_scope",
    "check_sparsity",
    "compact",
    "compute_masks",
    "constant",
    "cosine",
    "dense_masks",
    "drop_and_grow",
    "export_sparse",
    "finalize",
    "find_masks",
    "find_states",
    "fixed",
    "format_summary",
    "forward_flops",
    "iterative_sparsities",
    "kernel_uses",
    "layer_densities",
    "load_sparse",
    "lottery_round",
    "magnitude",
    "magnitude_scores",
    "mask_sparsity",
    "masks_from_scores",
    "nm",
    "nm_masks",
    "nonzero_masks",
    "num_removed",
    "one_shot",
    "polynomial",
    "prunable_paths",
    "random",
    "random_scores",
    "replace_masks",
    "rigl",
    "saliency",
    "saliency_scores",
    "select_prunable",
    "set_",
    "snip_scores",
    "static",
    "ste_apply_fn",
    "ste_masked",
    "step_flops",
    "structured_masks",
    "structured_sparsity",
    "summary",
    "unit_groups",
    "unit_scores",
    "update_steps",
    "wrap",
]
