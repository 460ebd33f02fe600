"""Multi-task learning: a shared trunk with per-task heads, loss weightings, per-task gradients.

Pieces, each usable on its own:

- `tasks`: `Task` declarations (`make_tasks`), per-task losses and metrics.
- `model`: `MultiTaskModel` (any `jaxopt_ft.models` trunk plus a Dense head per task; params
  ``{"trunk": …, "heads": {task: …}}``).
- `weighting`: pure functions over ``{task: loss}``: `equal_weights`, `static_weights`,
  `uncertainty_loss`, `dwa_weights`, `gradnorm_update`.
- `gradients`: `per_task_grads` (all tasks in one `jax.jacrev` pass), `pcgrad`,
  `cosine_similarity`.
- `methods`: `Method`, one combiner per method (`WEIGHTINGS`: equal, static, uncertainty, DWA,
  GradNorm, PCGrad, alternating tasks, and the balancers of `balancers`: MGDA, MGDA-UB,
  CAGrad, Nash-MTL, IMTL, GradVac, GradDrop, RLW, Aligned-MTL, DB-MTL), `init_state` and
  `make_train_step`, a thin use of `jaxopt_ft.train.make_train_step` (data-parallel with
  ``axis_name``).
- `balancing`: the balancers' pure solvers on (T, P) gradient matrices (MGDA's min-norm
  solver, CAGrad's inner problem, Nash-MTL's bargaining equation, ...).
- `representation`: per-task gradients w.r.t. the shared representation (``rep_grad``).
- `architectures`: soft-sharing trunks (`MMoE`) with per-task features.
- `evaluation`: `evaluate` (per-task test metrics).

Example::

    tasks = make_tasks({"digit": {"kind": "classification", "num_classes": 10},
                        "slope": {"kind": "regression"}})
    model = MultiTaskModel(models.get("cnn"), tasks)
    state, method = init_state(model, Method(name="pcgrad"), key=key, sample_x=x[:1],
                               tx=optax.adam(1e-2))
    state, summary = loop.fit(state, make_train_step(tasks, method), batches, steps=..., key=key)
"""

from jaxopt_ft.multitask.architectures import MMoE as MMoE
from jaxopt_ft.multitask.balancers import REP_GRAD_METHODS as REP_GRAD_METHODS
from jaxopt_ft.multitask.balancers import rlw_weights as rlw_weights
from jaxopt_ft.multitask.balancing import aligned_mtl_weights as aligned_mtl_weights
from jaxopt_ft.multitask.balancing import cagrad_direction as cagrad_direction
from jaxopt_ft.multitask.balancing import graddrop as graddrop
from jaxopt_ft.multitask.balancing import gradvac_project as gradvac_project
from jaxopt_ft.multitask.balancing import imtl_weights as imtl_weights
from jaxopt_ft.multitask.balancing import mgda_weights as mgda_weights
from jaxopt_ft.multitask.balancing import nash_weights as nash_weights
from jaxopt_ft.multitask.evaluation import evaluate as evaluate
from jaxopt_ft.multitask.gradients import SimilarityState as SimilarityState
from jaxopt_ft.multitask.gradients import cosine_matrix as cosine_matrix
from jaxopt_ft.multitask.gradients import cosine_similarity as cosine_similarity
from jaxopt_ft.multitask.gradients import pcgrad as pcgrad
from jaxopt_ft.multitask.gradients import pcgrad_project as pcgrad_project
from jaxopt_ft.multitask.gradients import per_task_grads as per_task_grads
from jaxopt_ft.multitask.methods import ALTERNATE as ALTERNATE
from jaxopt_ft.multitask.methods import METHODS as METHODS
from jaxopt_ft.multitask.methods import WEIGHTINGS as WEIGHTINGS
from jaxopt_ft.multitask.methods import Method as Method
from jaxopt_ft.multitask.methods import Weighting as Weighting
from jaxopt_ft.multitask.model import MultiTaskModel as MultiTaskModel
from jaxopt_ft.multitask.model import check_heads as check_heads
from jaxopt_ft.multitask.model import last_shared_layer as last_shared_layer
from jaxopt_ft.multitask.tasks import KINDS as KINDS
from jaxopt_ft.multitask.tasks import LOSSES as LOSSES
from jaxopt_ft.multitask.tasks import Task as Task
from jaxopt_ft.multitask.tasks import make_tasks as make_tasks
from jaxopt_ft.multitask.training import alternating_tx as alternating_tx
from jaxopt_ft.multitask.training import init_state as init_state
from jaxopt_ft.multitask.training import make_train_step as make_train_step
from jaxopt_ft.multitask.training import model_params as model_params
from jaxopt_ft.multitask.training import task_losses as task_losses
from jaxopt_ft.multitask.weighting import UNCERTAINTY_FACTOR as UNCERTAINTY_FACTOR
from jaxopt_ft.multitask.weighting import DwaState as DwaState
from jaxopt_ft.multitask.weighting import GradNormState as GradNormState
from jaxopt_ft.multitask.weighting import dwa_current as dwa_current
from jaxopt_ft.multitask.weighting import dwa_weights as dwa_weights
from jaxopt_ft.multitask.weighting import equal_weights as equal_weights
from jaxopt_ft.multitask.weighting import gradnorm_update as gradnorm_update
from jaxopt_ft.multitask.weighting import static_weights as static_weights
from jaxopt_ft.multitask.weighting import uncertainty_loss as uncertainty_loss

__all__ = [
    "ALTERNATE",
    "MMoE",
    "REP_GRAD_METHODS",
    "aligned_mtl_weights",
    "cagrad_direction",
    "graddrop",
    "gradvac_project",
    "imtl_weights",
    "mgda_weights",
    "nash_weights",
    "rlw_weights",
    "DwaState",
    "GradNormState",
    "KINDS",
    "LOSSES",
    "METHODS",
    "Method",
    "MultiTaskModel",
    "SimilarityState",
    "Task",
    "UNCERTAINTY_FACTOR",
    "WEIGHTINGS",
    "Weighting",
    "alternating_tx",
    "check_heads",
    "cosine_matrix",
    "cosine_similarity",
    "dwa_current",
    "dwa_weights",
    "equal_weights",
    "evaluate",
    "gradnorm_update",
    "init_state",
    "last_shared_layer",
    "make_tasks",
    "make_train_step",
    "model_params",
    "pcgrad",
    "pcgrad_project",
    "per_task_grads",
    "static_weights",
    "task_losses",
    "uncertainty_loss",
]
