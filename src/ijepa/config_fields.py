"""The machinery behind :mod:`ijepa.config`'s sections: a field declared with its help text, checked against its
annotation, a nested mapping built into dataclasses, and the keys described as Markdown.

Nothing here knows a key of the pretraining config; :mod:`ijepa.config` declares them. Like it, this module imports
no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal

import yaml

from .errors import ConfigError


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with ``help`` (what ``describe`` prints); a list or dict default is copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _positive(section: str, obj: Any, *keys: str) -> None:
    for key in keys:
        v = getattr(obj, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{section}.{key} must be > 0, got {v}")


def _in_range(key: str, v: float, lo: float, hi: float, hi_open: bool = False) -> None:
    if v < lo or v > hi or (hi_open and v == hi):
        raise ConfigError(f"{key}: {v} is outside [{lo}, {hi}{')' if hi_open else ']'}")


def _range_pair(key: str, pair: tuple[float, float], lo: float, hi: float, lo_open: bool = False) -> None:
    a, b = pair
    if not (lo <= a <= b <= hi) or not math.isfinite(b) or (a == 0 and lo == 0 and b == 0) or (lo_open and a == lo):
        raise ConfigError(f"{key}: expected [min, max] with {lo} {'<' if lo_open else '<='} min <= max "
                          f"{'<' if math.isinf(hi) else '<='} {hi}, got {list(pair)}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (the few shapes the config uses) and normalise it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)})")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 5e-4 as a string: accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls: type, data: Any, prefix: str, removed: dict[str, str]) -> Any:
    """``cls`` from the nested mapping ``data``: each value coerced to its field's annotation, sections built
    recursively. A key in ``removed`` (dotted name -> why) fails with its reason; another unknown key fails with the
    closest known one."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if name in removed:
            raise ConfigError(f"{name} was removed: {removed[name]}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{name}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, name, removed)
        else:
            kwargs[key] = _coerce(name, value, tp)
    return cls(**kwargs)


def _plain(obj: Any) -> Any:
    """Tuples as lists, recursively: what YAML writes plainly."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def describe_sections(cls: type) -> list[str]:
    """Markdown lines: a table per section of the dataclass ``cls``, each key with its default and help."""
    lines = []
    for sec in dataclasses.fields(cls):
        lines += [f"### `{sec.name}`", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(sec.default_factory):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = yaml.safe_dump(_plain(default), default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| `{sec.name}.{f.name}` | `{shown}` | {f.metadata.get('help', '')} |")
        lines.append("")
    return lines
