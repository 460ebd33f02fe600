"""Typed settings from configs: frozen dataclasses whose fields carry default, check and meaning.

A settings class is a frozen dataclass; each field is a :func:`setting` (a default, a check
that normalises the value and names its key in errors, and a one-line meaning) or a
:func:`section` (a nested settings class). :func:`parse` reads an ``ml_collections.ConfigDict``
(or a dict) into one, once, and :func:`to_config` turns the defaults back into the ConfigDict
that config files start from, so every default lives in exactly one place. Unknown keys are
errors, and a class may define ``check(self, key)`` for rules across its fields (``key(name)``
gives a field's dotted config key for the message).

This module imports neither jax nor the library: config files load without them. Checks that
need the library's lists of names (optimizers, models, ...) import them when they run.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

Check = Callable[[Any, str], Any]
_SECTION = "section"


def setting(default: Any, check: Check, doc: str) -> Any:
    """A dataclass field: its ``default``, a ``check(value, key) -> value`` and its meaning."""
    meta = {"check": check, "doc": doc}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str = "") -> Any:
    """A dataclass field holding the nested settings class ``cls`` (its defaults by default)."""
    return dataclasses.field(default_factory=cls, metadata={_SECTION: cls, "doc": doc})


def _plain(value: Any) -> Any:
    """ConfigDicts as dicts and lists as tuples, recursively."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def _keys(node: Any) -> list[str]:
    if isinstance(node, ml_collections.ConfigDict | Mapping):
        return list(node.keys())
    return []


def parse(cls: type, node: Any, prefix: str = "") -> Any:
    """Reads ``node`` (a ConfigDict or mapping) into the settings class ``cls``.

    Missing keys take the field's default; every value goes through its check.

    Raises:
      ValueError: an unknown key, or a value its check rejects; the message names the dotted
        key, the value and what is accepted.
    """
    if node is not None and not isinstance(node, ml_collections.ConfigDict | Mapping):
        where = prefix[:-1] or "the config"
        raise ValueError(f"{where} must be a section of keys, got {node!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = _keys(node)
    extra = getattr(cls, "EXTRA", None)
    unknown = [k for k in given if k not in fields]
    if unknown and extra is None:
        accepted = ", ".join(k for k in fields if k != extra)
        raise ValueError(
            f"The config has no key {prefix}{unknown[0]!s}; {prefix[:-1] or 'the config'} "
            f"accepts: {accepted}. Remove or rename it."
        )
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if _SECTION in f.metadata:
            values[name] = parse(
                f.metadata[_SECTION], node[name] if name in given else {}, key + "."
            )
        elif name == extra:
            values[name] = {k: _plain(node[k]) for k in unknown}
        else:
            value = _plain(node[name]) if name in given else _default(f)
            values[name] = f.metadata["check"](value, key)
    out = cls(**values)
    if hasattr(out, "check"):
        out.check(lambda name: f"{prefix}{name}")
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def to_config(obj: Any) -> ml_collections.ConfigDict:
    """The settings object as a ConfigDict (mappings keep their order)."""
    out = ml_collections.ConfigDict(sort_keys=False)
    extra = getattr(type(obj), "EXTRA", None)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _SECTION in f.metadata:
            out[f.name] = to_config(value)
        elif f.name == extra:
            for k, v in value.items():
                out[k] = v
        elif isinstance(value, Mapping):
            out[f.name] = ml_collections.ConfigDict(dict(value), sort_keys=False)
        else:
            out[f.name] = value
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(dotted key, default, meaning)`` of every setting of ``cls``, sections expanded."""
    rows = []
    for f in dataclasses.fields(cls):
        if _SECTION in f.metadata:
            rows += describe(f.metadata[_SECTION], f"{prefix}{f.name}.")
        elif "check" in f.metadata:
            rows.append((f"{prefix}{f.name}", _default(f), f.metadata["doc"]))
    return rows


# --- checks: each returns ``check(value, key) -> normalised value`` ----------------------------


def _fail(key: str, value: Any, want: str) -> ValueError:
    return ValueError(f"{key} must be {want}, got {value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Counts (steps, sizes, seeds) beyond int32 are typos, not plans: a run of 2**40 steps never ends.
INT_LIMIT = 2**31 - 1


def integer(minimum: int = 0, maximum: int | None = None, *, note: str = "") -> Check:
    """An int in ``[minimum, maximum]`` (``maximum`` defaults to :data:`INT_LIMIT`)."""
    want = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    want += note
    top = INT_LIMIT if maximum is None else maximum

    def check(value, key):
        if _is_int(value) and value > top and maximum is None:
            raise _fail(key, value, f"<= {INT_LIMIT} (2**31 - 1)")
        if not _is_int(value) or value < minimum or value > top:
            raise _fail(key, value, want)
        return value

    return check


def number(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> Check:
    """A finite number in the interval from ``low`` to ``high`` (closed unless ``*_open``)."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    want = f"a number in {lo}{low:g}, {high:g}{hi}" + note

    def check(value, key):
        if not _is_number(value):
            raise _fail(key, value, want)
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            raise _fail(key, value, want)
        return float(value)

    return check


def boolean() -> Check:
    def check(value, key):
        if not isinstance(value, bool):
            raise _fail(key, value, "True or False")
        return value

    return check


def text(*, allow_empty: bool = True) -> Check:
    def check(value, key):
        if not isinstance(value, str) or not (value or allow_empty):
            raise _fail(key, value, "a non-empty string" if not allow_empty else "a string")
        return value

    return check


def lazy(module: str, name: str) -> Callable[[], Sequence[str]]:
    """The library constant ``module.name``, imported when a check first needs it."""
    return lambda: getattr(importlib.import_module(module), name)


def choice(options: Sequence[str] | Callable[[], Sequence[str]]) -> Check:
    """One of ``options`` (a sequence, or a function returning one: see :func:`lazy`)."""

    def check(value, key):
        accepted = tuple(options() if callable(options) else options)
        if not isinstance(value, str) or value not in accepted:
            raise ValueError(
                f"{key}={value!r} is not accepted; choose one of: {', '.join(accepted)}."
            )
        return value

    return check


def sequence(item: Check, *, min_len: int = 1, distinct: bool = True, example: str = "") -> Check:
    """A list (stored as a tuple) whose entries pass ``item``; the error names the entry."""

    def check(value, key):
        if isinstance(value, str) or not isinstance(value, tuple | list):
            hint = f", e.g. {example}" if example else ""
            raise _fail(key, value, f"a list of at least {min_len} entries{hint}")
        if len(value) < min_len:
            raise _fail(key, value, f"a list of at least {min_len} entries")
        out = tuple(item(v, f"{key}[{i}]") for i, v in enumerate(value))
        if distinct and len(set(out)) != len(out):
            raise ValueError(f"{key}={list(value)!r} has duplicates; remove them.")
        return out

    return check


def rules(value: Check | None = None, *, allow_empty: bool = True, example: str = "") -> Check:
    """``((regex, value), ...)`` pairs; ``()`` allowed when ``allow_empty``."""
    example = example or "(('conv1/kernel', False), ('.*/kernel', True))"

    def check(given, key):
        ok = isinstance(given, tuple | list) and all(
            isinstance(r, tuple | list) and len(r) == 2 and isinstance(r[0], str) for r in given
        )
        if not ok or not (given or allow_empty):
            empty = ", or () for the default" if allow_empty else ""
            raise ValueError(
                f"{key} must be a list of (regex, value) pairs, got {given!r}; e.g. {example}"
                f"{empty}."
            )
        return tuple((rx, v if value is None else value(v, f"{key}[{rx!r}]")) for rx, v in given)

    return check


def mapping(value: Check, *, allow_empty: bool = True) -> Check:
    """A ``{name: value}`` mapping (kept in order) whose values pass ``value``."""

    def check(given, key):
        if not isinstance(given, Mapping) or not (given or allow_empty):
            raise _fail(key, given, "a mapping of names to values")
        return {str(k): value(v, f"{key}.{k}") for k, v in given.items()}

    return check


def anything() -> Check:
    """Any value; checked by the library where it is used (e.g. task declarations)."""
    return lambda value, key: value


def library(module: str, name: str) -> Check:
    """The library's own validator ``module.name(value, what=key)`` (imported when it runs)."""

    def check(value, key):
        return getattr(importlib.import_module(module), name)(value, what=key)

    return check


# Checks several settings sections share.
POSITIVE = number(0.0, low_open=True)
RATE = number(0.0, 100.0, low_open=True)
FRACTION = number(0.0, 1.0)
SPARSITY = library("jaxopt_ft.prune", "check_sparsity")
BITS = library("jaxopt_ft.quant", "check_bits")
OPTIMIZER = choice(lazy("jaxopt_ft.optim", "OPTIMIZERS"))
SCHEDULE = choice(lazy("jaxopt_ft.optim", "SCHEDULES"))
