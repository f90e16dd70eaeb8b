"""Strict conversion of plain dicts into the typed config dataclasses.

Every value is checked against its field's type; unknown keys name the closest valid key. The keys a user actually
wrote are recorded (as dotted paths) so that "has no effect" warnings only list what the user set.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def closest(name: str, options) -> str | None:
    m = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return m[0] if m else None


def unknown_key_error(path: str, key: str, options) -> ConfigError:
    near = closest(key, options)
    fix = f"did you mean {near!r}?" if near else "remove it"
    return ConfigError(path, f"unknown key {key!r} (valid keys: {', '.join(sorted(options))})", fix)


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def convert(tp, value: Any, path: str, explicit: set[str]) -> Any:
    """Convert `value` to type `tp` or raise ConfigError naming `path`."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(a, value, path, explicit)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}", f"give {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        near = closest(str(value), [str(a) for a in allowed])
        fix = f"use {near!r}" if near else f"use one of {', '.join(repr(a) for a in allowed)}"
        raise ConfigError(path, f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}", fix)
    if origin is list:
        (inner,) = get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list of {_type_name(inner)}, got {value!r}", "write it as a list, e.g. [1, 2]")
        return [convert(inner, v, f"{path}[{i}]", explicit) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}", "write it as key: value pairs")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, explicit)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true or false, got {value!r}", "write true or false (without quotes)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise ConfigError(path, f"expected an integer, got {value!r}", "write a whole number such as 100")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        # YAML 1.1 reads `1e-5` (no dot) as a string; accept numeric strings for float fields.
        elif isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            number = value
        if number is not None:
            try:
                f = float(number)
            except OverflowError:
                f = math.inf
            if not math.isfinite(f):  # inf/nan pass most range checks and then poison training
                raise ConfigError(path, f"expected a finite number, got {value!r}", "write a number such as 0.5 or 1.0e-4")
            return f
        raise ConfigError(path, f"expected a number, got {value!r}", "write a number such as 0.5 or 1.0e-4")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {value!r}", "put the value in quotes")
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in the schema, not user input


def from_dict(cls, data: Any, path: str = "", explicit: set[str] | None = None):
    """Build dataclass `cls` from mapping `data`, strictly. Records set key paths in `explicit`."""
    if explicit is None:
        explicit = set()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path or "<root>", f"expected a mapping, got {data!r}", "write it as key: value pairs")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise unknown_key_error(path or "<root>", str(key), names)
        kwargs[key] = convert(hints[key], value, sub, explicit)
        explicit.add(sub)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj


def to_dict(obj) -> Any:
    """Dataclass tree -> plain dict/list values (for YAML/JSON output)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def field_paths(cls, prefix: str = "") -> list[str]:
    """All dotted leaf paths of a dataclass type (for tests proving every field reaches code)."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        p = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        inner = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, types.UnionType) else [tp]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            out += field_paths(inner[0], p)
        else:
            out.append(p)
    return out


def require(cond: bool, path: str, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(path, problem, fix)


__all__ = ["convert", "from_dict", "to_dict", "field_paths", "require", "closest", "unknown_key_error", "typing"]
