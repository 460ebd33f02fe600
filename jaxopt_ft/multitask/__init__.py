"""Multi-task learning: a shared trunk with per-task heads, loss weightings, per-task gradients.

Pieces, each usable on its own:

- `tasks`: `Task` declarations (`make_tasks`), the built-in tasks of the digit datasets
  (`derive_targets`: ``digit``, ``parity``, ``large``, and ``slope``/``ink`` regression).
- `model`: `MultiTaskModel` (any `jaxopt_ft.models` trunk plus a Dense head per task; params
  ``{"trunk": …, "heads": {task: …}}``).
- `weighting`: pure functions over ``{task: loss}``: `equal_weights`, `static_weights`,
  `uncertainty_loss`, `dwa_weights`, `gradnorm_update`.
- `gradients`: `per_task_grads` (all tasks in one `jax.jacrev` pass), `pcgrad`,
  `cosine_similarity`.
- `step`: `Method`, `init_state`, `make_train_step` (equal, static, uncertainty, DWA, GradNorm,
  PCGrad, alternating tasks; data-parallel with ``axis_name``).
- `evaluation`: `evaluate` (per-task test metrics).

Example::

    tasks = make_tasks({"digit": {"kind": "classification", "num_classes": 10},
                        "slope": {"kind": "regression"}})
    model = MultiTaskModel(models.get("cnn"), tasks)
    method = Method(name="pcgrad")
    state = init_state(model, method, key=key, sample_x=x[:1], tx=optax.adam(1e-2))
    state, summary = train.fit(state, make_train_step(tasks, method), batches, steps=..., key=key)
"""

from jaxopt_ft.multitask.evaluation import evaluate as evaluate
from jaxopt_ft.multitask.gradients import SimilarityState as SimilarityState
from jaxopt_ft.multitask.gradients import cosine_matrix as cosine_matrix
from jaxopt_ft.multitask.gradients import cosine_similarity as cosine_similarity
from jaxopt_ft.multitask.gradients import pcgrad as pcgrad
from jaxopt_ft.multitask.gradients import pcgrad_project as pcgrad_project
from jaxopt_ft.multitask.gradients import per_task_grads as per_task_grads
from jaxopt_ft.multitask.model import MultiTaskModel as MultiTaskModel
from jaxopt_ft.multitask.model import check_heads as check_heads
from jaxopt_ft.multitask.model import last_shared_layer as last_shared_layer
from jaxopt_ft.multitask.step import ALTERNATE as ALTERNATE
from jaxopt_ft.multitask.step import METHODS as METHODS
from jaxopt_ft.multitask.step import AlternatingTx as AlternatingTx
from jaxopt_ft.multitask.step import Method as Method
from jaxopt_ft.multitask.step import MultiTaskState as MultiTaskState
from jaxopt_ft.multitask.step import init_state as init_state
from jaxopt_ft.multitask.step import make_train_step as make_train_step
from jaxopt_ft.multitask.tasks import KINDS as KINDS
from jaxopt_ft.multitask.tasks import LOSSES as LOSSES
from jaxopt_ft.multitask.tasks import Task as Task
from jaxopt_ft.multitask.tasks import available_tasks as available_tasks
from jaxopt_ft.multitask.tasks import derive_targets as derive_targets
from jaxopt_ft.multitask.tasks import make_tasks as make_tasks
from jaxopt_ft.multitask.weighting import DwaState as DwaState
from jaxopt_ft.multitask.weighting import GradNormState as GradNormState
from jaxopt_ft.multitask.weighting import dwa_weights as dwa_weights
from jaxopt_ft.multitask.weighting import equal_weights as equal_weights
from jaxopt_ft.multitask.weighting import gradnorm_update as gradnorm_update
from jaxopt_ft.multitask.weighting import static_weights as static_weights
from jaxopt_ft.multitask.weighting import uncertainty_loss as uncertainty_loss

__all__ = [
    "ALTERNATE",
    "AlternatingTx",
    "DwaState",
    "GradNormState",
    "KINDS",
    "LOSSES",
    "METHODS",
    "Method",
    "MultiTaskModel",
    "MultiTaskState",
    "SimilarityState",
    "Task",
    "available_tasks",
    "check_heads",
    "cosine_matrix",
    "cosine_similarity",
    "derive_targets",
    "dwa_weights",
    "equal_weights",
    "evaluate",
    "gradnorm_update",
    "init_state",
    "last_shared_layer",
    "make_tasks",
    "make_train_step",
    "pcgrad",
    "pcgrad_project",
    "per_task_grads",
    "static_weights",
    "uncertainty_loss",
]
