"""Short runs on demand: every phase of any config cut to a few steps (``jaxopt-ft --quick``).

A smoke run checks that a config, its data and every phase work end to end, in seconds. It
is applied to the config before it is parsed, so the workdir's ``config.json`` records the
short run (a quick run never resumes a full one, nor the other way round).
"""

from __future__ import annotations

from typing import Any

import ml_collections

# Keys that count steps but are not a phase's length.
_NOT_LENGTHS = ("accumulate_steps", "warmup_steps", "every_steps")


def _is_length(key: str) -> bool:
    return (key == "steps" or key.endswith("_steps")) and key not in _NOT_LENGTHS


def _short(key: str, value: Any, steps: int) -> Any:
    """The quick value of one key (the value itself when the key is not shortened)."""
    if isinstance(value, bool) or not isinstance(value, int | tuple | list):
        return value
    if isinstance(value, tuple | list):
        return value[:2] if key == "seeds" else value
    if _is_length(key) and value > 0:
        return min(value, steps)
    caps = {
        "warmup_steps": steps // 4,
        "log_every": steps,
        "frequency": max(1, steps // 4),
        "similarity_every": max(1, steps // 4),
        "eval_every": max(1, steps // 2),
        "dwa_window": steps,
        "timing_repeats": 2,
    }
    return min(value, caps[key]) if key in caps else value


def shorten(config: ml_collections.ConfigDict, steps: int = 20) -> list[str]:
    """Cuts every phase of ``config`` to at most ``steps`` steps, in place.

    Phase lengths (``steps`` and ``*_steps`` keys, e.g. ``train.steps``, ``prune.steps``,
    ``prune.structured_steps``, ``quant.qat_steps``, ``transfer.steps``) become at most
    ``steps``; cadences (``log_every``, ``prune.frequency``, ...) shrink with them, ``warmup``
    stays inside the phase, seed lists keep their first two seeds and timing uses two repeats.
    ``train.steps`` stays a multiple of ``optimizer.accumulate_steps``.

    Returns:
      ``"key: old -> new"`` for every key changed.
    """
    changed: list[str] = []

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
                continue
            new = _short(key, value, steps)
            if new != value:
                node[key] = type(value)(new) if isinstance(value, tuple | list) else new
                changed.append(f"{prefix}{key}: {value!r} -> {new!r}")

    with config.unlocked():
        walk(config, "")
        k = config.get("optimizer", {}).get("accumulate_steps", 1)
        if "train" in config and isinstance(k, int) and k > 1:
            config.train.steps = max(k, config.train.steps // k * k)
    return changed
