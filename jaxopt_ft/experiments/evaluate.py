"""Evaluating a finished run: a phase's latest checkpoint on a split (``jaxopt-ft evaluate``)."""

from __future__ import annotations

import os

from jaxopt_ft import checkpoint, train
from jaxopt_ft.experiments import common
from jaxopt_ft.experiments.settings import Common


def phases(workdir: str) -> list[str]:
    """The phases of ``workdir`` with a checkpoint folder, sorted."""
    root = os.path.join(workdir, "checkpoints")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def checkpoint_metrics(s: Common, workdir: str, *, phase: str | None, split: str) -> dict:
    """Loss and accuracy on ``split`` of the params of ``phase``'s latest checkpoint.

    Args:
      s: the run's settings (from its ``config.json``); they give the model and the data.
      workdir: the run's workdir.
      phase: the checkpointed phase to evaluate; None when the workdir holds only one.
      split: ``"train"`` or ``"test"`` (any split the dataset accepts).

    Returns:
      ``{"phase", "step", "split", "<split>_loss", "<split>_accuracy"}``.

    Raises:
      ValueError: no checkpoint, an unknown or ambiguous phase, or a checkpoint whose params
        do not fit the config's model (e.g. a narrowed or re-headed model's phase).
    """
    found = phases(workdir)
    if phase is None and len(found) == 1:
        phase = found[0]
    if phase not in found:
        raise ValueError(
            f"--phase={phase!r} is not a checkpointed phase of --workdir={workdir!r}; "
            f"pick one of: {', '.join(found) or '(none: the run saved no checkpoint)'}."
        )
    read = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", phase)).read()
    if read is None:
        raise ValueError(f"phase {phase!r} of --workdir={workdir!r} holds no checkpoint yet.")
    step, tree = read
    ds = common.load_split(s, split)
    model = common.build_model(s, num_classes=ds.num_classes)
    variables = train.variables_of(tree["params"], tree.get("batch_stats"))
    try:
        metrics = common.evaluate(s, model.apply, variables, ds)
    except Exception as e:  # noqa: BLE001 - flax reports a shape mismatch in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(
            f"phase {phase!r}'s checkpoint does not fit the config's model {s.model.name!r} "
            f"({first}); evaluate a phase trained with the config's model, e.g. "
            f"{', '.join(found)}."
        ) from None
    renamed = {k.replace("test_", f"{split}_", 1): v for k, v in metrics.items()}
    return {"phase": phase, "step": step, "split": split, **renamed}
