"""Fine-tuning: pretrained loading, rule-based freezing, trainable-only steps, features, LoRA.

- :mod:`~jaxopt_ft.finetune.load`: read ``params``/``batch_stats`` from an orbax checkpoint and
  transplant them into a new model, re-initialising what ``dont_load`` rules name.
- :mod:`~jaxopt_ft.finetune.freeze`: ``(regex, label)`` rules -> labels -> an
  ``optax.multi_transform`` optimizer (``set_to_zero`` for frozen leaves) and the trainable
  mask for ``train.make_train_step``, which then differentiates only the trainable leaves.
- :mod:`~jaxopt_ft.finetune.features`: run a frozen trunk once and train a head on the cache.
- :mod:`~jaxopt_ft.finetune.lora`: low-rank adapters as a pure params -> params transform.
"""

from jaxopt_ft.finetune import features as features
from jaxopt_ft.finetune import lora as lora
from jaxopt_ft.finetune.freeze import FROZEN as FROZEN
from jaxopt_ft.finetune.freeze import MODES as MODES
from jaxopt_ft.finetune.freeze import count_groups as count_groups
from jaxopt_ft.finetune.freeze import count_trainable as count_trainable
from jaxopt_ft.finetune.freeze import freeze_labels as freeze_labels
from jaxopt_ft.finetune.freeze import mode_rules as mode_rules
from jaxopt_ft.finetune.freeze import optimizer as optimizer
from jaxopt_ft.finetune.freeze import trainable_mask as trainable_mask
from jaxopt_ft.finetune.load import load_pretrained as load_pretrained
from jaxopt_ft.finetune.load import restore_variables as restore_variables
from jaxopt_ft.finetune.load import transplant as transplant

__all__ = [
    "FROZEN",
    "MODES",
    "count_groups",
    "count_trainable",
    "features",
    "freeze_labels",
    "load_pretrained",
    "lora",
    "mode_rules",
    "optimizer",
    "restore_variables",
    "trainable_mask",
    "transplant",
]
