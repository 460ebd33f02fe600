"""What a model declares about its own structure, for structured pruning.

Models import nothing of the library, so the descriptor lives here and ``jaxopt_ft.prune``
reads models by protocol. A model that structured pruning can shrink defines:

- ``unit_groups() -> tuple[UnitGroup, ...]``: the units removed together, and where they live
  in the params and batch_stats;
- ``narrowed(sizes) -> Module``: the same model with each named group ``sizes[name]`` wide,
  which accepts the compacted params.

Masked and compacted models agree when every removed unit outputs exactly zero once its
producer entries are masked (ReLU, GELU and max-pool keep 0 at 0) and its consumers' input
rows are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn


class UnitGroup(NamedTuple):
    """Units removed together, and where they live.

    Attributes:
      name: group name (``"conv2"``, ``"stage1_block1/conv1"``, ``"hidden"``).
      size: number of units.
      producers: params paths whose last axis indexes the units (kernels, biases, norms), or
        ``(path, axis)`` when another axis does (attention heads: axis 1 of a query kernel
        ``(hidden, heads, head_dim)``, axis 0 of its bias ``(heads, head_dim)``).
      stats: batch_stats paths whose last axis indexes the units (BatchNorm mean and var).
      consumers: params kernel paths whose input axis (-2) holds the units, possibly
        repeated over positions after a flatten (index ``p * size + unit``), or
        ``(path, axis)`` where ``axis`` indexes the units exactly (axis 0 of an attention
        output projection ``(heads, head_dim, hidden)``).
      field: the model field holding this group's width.
      index: position in that field's tuple, or None when the group sets every entry.
    """

    name: str
    size: int
    producers: tuple[str | tuple[str, int], ...]
    stats: tuple[str, ...]
    consumers: tuple[str | tuple[str, int], ...]
    field: str
    index: int | None


def chain(names: Sequence[str], widths: Sequence[int], field: str, last: str) -> list[UnitGroup]:
    """Groups for Dense/Conv layers ``names`` that each feed the next (the last feeds ``last``).

    Each layer's kernel columns and bias produce its units; the next layer's kernel rows
    consume them; ``field[i]`` is layer ``i``'s width.
    """
    groups = []
    for i, (name, width) in enumerate(zip(names, widths, strict=True)):
        consumer = names[i + 1] if i + 1 < len(names) else last
        groups.append(
            UnitGroup(
                name=name,
                size=width,
                producers=(f"{name}/kernel", f"{name}/bias"),
                stats=(),
                consumers=(f"{consumer}/kernel",),
                field=field,
                index=i,
            )
        )
    return groups


def narrowed(
    model: nn.Module,
    sizes: Mapping[str, int],
    widths: Mapping[str, Sequence[int]],
    **fixed: object,
) -> nn.Module:
    """``model`` cloned with every group in ``sizes`` set to that many units.

    Args:
      model: a model with ``unit_groups()``.
      sizes: ``{group name: new width}``; groups not named keep their width.
      widths: the model's current width fields as built (after any ``width_mult``).
      **fixed: further fields for the clone (``width_mult=1.0`` once widths are explicit).

    Raises:
      ValueError: a name in ``sizes`` is not one of the model's groups.
    """
    groups = {g.name: g for g in model.unit_groups()}
    unknown = sorted(set(sizes) - set(groups))
    if unknown:
        raise ValueError(
            f"{type(model).__name__} has no unit groups {unknown}; its groups are "
            f"{list(groups)}. Fix: name groups from model.unit_groups()."
        )
    values = {field: list(v) for field, v in widths.items()}
    for name, size in sizes.items():
        g = groups[name]
        for i in range(len(values[g.field])) if g.index is None else [g.index]:
            values[g.field][i] = int(size)
    return model.clone(**{field: tuple(v) for field, v in values.items()}, **fixed)
