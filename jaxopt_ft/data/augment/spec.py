"""Config specs (``"crop(pad=1), flip(p=0.5)"`` or a list of dicts) -> one augment function."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxopt_ft.data.augment._core import Augment, compose
from jaxopt_ft.data.augment.images import brightness_contrast, crop, cutout, flip, rotate
from jaxopt_ft.data.augment.mixing import cutmix, mixup
from jaxopt_ft.data.augment.signals import noise, scale, shift, stretch

IMAGE_OPS = ("crop", "flip", "rotate", "brightness_contrast", "cutout", "cutmix")
SIGNAL_OPS = ("shift", "stretch", "scale", "noise")
ANY_OPS = ("mixup",)
OPS: dict[str, Callable[..., Augment]] = {
    "crop": crop,
    "flip": flip,
    "rotate": rotate,
    "brightness_contrast": brightness_contrast,
    "cutout": cutout,
    "cutmix": cutmix,
    "mixup": mixup,
    "shift": shift,
    "stretch": stretch,
    "scale": scale,
    "noise": noise,
}
_NEEDS_CLASSES = ("mixup", "cutmix")
_OP_RE = re.compile(r"\s*([A-Za-z_]\w*)\s*(?:\(([^()]*)\))?\s*(?:,|$)")


def _parse_args(name: str, text: str) -> dict[str, Any]:
    kwargs = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = part.partition("=")
        try:
            if not eq:
                raise ValueError
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(
                f"augment op {name!r}: cannot read argument {part!r}; write key=number, e.g. "
                f"{name}(p=0.5)."
            ) from None
    return kwargs


def parse(spec: str | Sequence[Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """Reads an augmentation spec into ``[(name, kwargs), ...]`` (names are not checked here).

    Args:
      spec: ``""``/``None`` (no augmentation); a string ``"crop(pad=1), flip(p=0.5)"``; or a
        sequence whose items are such strings or mappings ``{"name": "crop", "pad": 1}``.

    Raises:
      ValueError: text that is not ``name(key=value, ...)`` items, or a mapping without a name.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        spec = spec.strip()
        out, pos = [], 0
        while pos < len(spec):
            m = _OP_RE.match(spec, pos)
            if not m or m.end() == pos:
                raise ValueError(
                    f"Cannot read augment spec {spec!r} at {spec[pos:]!r}; write ops as "
                    "'name(key=value, ...)' separated by commas, e.g. 'crop(pad=1), flip(p=0.5)'."
                )
            out.append((m.group(1), _parse_args(m.group(1), m.group(2) or "")))
            pos = m.end()
        return out
    out = []
    for item in spec:
        if isinstance(item, str):
            out.extend(parse(item))
        elif isinstance(item, Mapping) or hasattr(item, "items"):
            kwargs = dict(item.items())
            if "name" not in kwargs:
                raise ValueError(f"augment op {kwargs!r} has no 'name'; add e.g. name='crop'.")
            out.append((kwargs.pop("name"), kwargs))
        else:
            raise ValueError(
                f"augment op {item!r} is neither 'name(key=value)' text nor a mapping with a name."
            )
    return out


def build(
    spec: str | Sequence[Any] | None,
    *,
    input_shape: Sequence[int],
    num_classes: int,
) -> Augment | None:
    """Builds the augmentation ``spec`` for examples of ``input_shape``; None when empty.

    Args:
      spec: see :func:`parse`.
      input_shape: one example's shape: ``(H, W, C)`` for image ops, ``(L,)`` or ``(L, C)``
        for signal ops.
      num_classes: passed to ``mixup`` and ``cutmix`` (which make soft labels).

    Raises:
      ValueError: an unknown op or argument (the message lists the accepted ones), a
        probability outside [0, 1] or another out-of-range value, or an op that does not fit
        the data (an image op on 1-D signals or the reverse).
    """
    ops = []
    rank = len(tuple(input_shape))
    for name, kwargs in parse(spec):
        if name not in OPS:
            raise ValueError(
                f"Unknown augmentation {name!r}; accepted: {', '.join(OPS)} (image ops: "
                f"{', '.join(IMAGE_OPS)}; 1-D signal ops: {', '.join(SIGNAL_OPS)})."
            )
        factory = OPS[name]
        accepted = [k for k in inspect.signature(factory).parameters if k != "num_classes"]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"augment op {name!r} has no argument {', '.join(unknown)}; accepted: "
                f"{', '.join(accepted)}."
            )
        if name in IMAGE_OPS and rank != 3:
            raise ValueError(
                f"augment op {name!r} needs images (H, W, C), but examples have shape "
                f"{tuple(input_shape)}; use a 1-D op ({', '.join(SIGNAL_OPS)}) instead."
            )
        if name in SIGNAL_OPS and rank not in (1, 2):
            raise ValueError(
                f"augment op {name!r} needs 1-D signals (L,) or (L, C), but examples have shape "
                f"{tuple(input_shape)}; use an image op ({', '.join(IMAGE_OPS)}) instead."
            )
        if name in _NEEDS_CLASSES:
            kwargs = {**kwargs, "num_classes": num_classes}
        ops.append(factory(**kwargs))
    return compose(*ops) if ops else None
