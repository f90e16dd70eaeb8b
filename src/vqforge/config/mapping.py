"""Shared machinery for the readers that map a foreign format (seed JSON, taming YAML) into the native schema.

A reader fills a `NativeBuilder`: every value goes to one dotted native path and remembers the user's key it came
from. Two user keys that land on the same native path with different values are a `ConfigError` naming both;
equal values are fine. Errors raised later by the strict schema conversion name native paths; `translate_error`
rewrites them to the user's key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from .parse import closest


@dataclass
class Mapped:
    """A config mapped to the native layout, before the strict schema conversion."""

    native: dict  # plain nested dict in the native layout
    explicit: set[str]  # native leaf paths the user's keys set
    sources: dict[str, str]  # native path (leaf or section) -> the user's key it came from
    notes: list[str] = field(default_factory=list)  # reader remarks shown with the "no effect" warnings
    fmt: str = "native"


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats 1 and 1.0 (and '1e-4' and 0.0001) as the same; True is never a number here."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    fa, fb = _as_float(a), _as_float(b)
    if fa is not None and fb is not None:
        return fa == fb or (math.isnan(fa) and math.isnan(fb))
    try:
        return bool(a == b)
    except Exception:  # exotic objects from YAML (dates compared with strings etc.)
        return False


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            return None
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


class NativeBuilder:
    """Collects native values with their source keys; detects keys given twice with different values."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.native: dict = {}
        self.explicit: set[str] = set()
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []
        self._values: dict[str, tuple[str, Any]] = {}

    def put(self, path: str, value: Any, source: str, *, explicit: bool = True, fix: str | None = None,
            why: str | None = None) -> None:
        """Set native `path` from the user's key `source`. A second, different value for `path` is an error."""
        prev = self._values.get(path)
        if prev is not None and prev[0] == "(default)":
            prev = None  # a format default gives way to the user's key
        if prev is not None:
            src0, v0 = prev
            if not same_value(v0, value):
                reason = f" ({why})" if why else ""
                raise ConfigError(
                    source,
                    f"{value!r} conflicts with {src0} = {v0!r}: both set {path}{reason}",
                    fix or f"give this setting once: keep either {src0} or {source}",
                )
            if explicit:
                self.explicit.add(path)
            return
        self._values[path] = (source, value)
        self._set(path, value, source)
        self.sources[path] = source
        if explicit:
            self.explicit.add(path)

    def put_tree(self, path: str, value: Any, source: str) -> None:
        """Set a section from a mapping, key by key (so each leaf is explicit and conflicts are per key)."""
        if isinstance(value, dict) and value:
            self.sources.setdefault(path, source)
            for k, v in value.items():
                self.put_tree(f"{path}.{k}", v, f"{source}.{k}")
        elif isinstance(value, dict):
            self.sources.setdefault(path, source)
            self._set(path, {}, source, merge=True)
        else:
            self.put(path, value, source)

    def default(self, path: str, value: Any) -> None:
        """Set `path` unless a user key already did; not explicit (a format's default, not the user's choice)."""
        if path in self._values:
            return
        self._values[path] = ("(default)", value)
        self._set(path, value, "(default)")

    def is_set(self, path: str) -> bool:
        return path in self._values

    def get(self, path: str, fallback: Any = None) -> Any:
        v = self._values.get(path)
        return fallback if v is None else v[1]

    def source_of(self, path: str) -> str | None:
        v = self._values.get(path)
        return None if v is None else v[0]

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _set(self, path: str, value: Any, source: str, merge: bool = False) -> None:
        cur = container_for(self.native, path, lambda here: self.sources.get(here, here))
        last = path.rsplit(".", 1)[-1]
        if merge and isinstance(cur.get(last), dict):
            return
        cur[last] = value

    def result(self) -> Mapped:
        return Mapped(self.native, set(self.explicit), dict(self.sources), list(self.notes), self.fmt)


_SPLIT = re.compile(r"(?=[.\[])")


def container_for(root: dict, path: str, name_of: Any = None) -> dict:
    """The dict under `root` that holds the last key of the dotted `path`, creating missing levels. A level that is
    not a mapping is a ConfigError at `name_of(prefix)` (default: the dotted prefix itself)."""
    parts = path.split(".")
    cur = root
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        elif not isinstance(nxt, dict):
            here = ".".join(parts[: i + 1])
            raise ConfigError(name_of(here) if name_of else here, f"expected a mapping, got {nxt!r}",
                              "write it as key: value pairs")
        cur = nxt
    return cur


def translate_error(err: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """Rewrite a ConfigError about a native path to name the user's key it came from (native path in brackets)."""
    path = err.path
    if not path or not sources:
        return err
    pieces = _SPLIT.split(path)
    for n in range(len(pieces), 0, -1):
        prefix = "".join(pieces[:n])
        src = sources.get(prefix)
        if src is not None:
            rest = "".join(pieces[n:])
            if src == prefix:
                return err
            return ConfigError(f"{src}{rest} (native: {path})", err.problem, err.fix)
    return err


def check_keys(mapping: dict, allowed: Iterable[str], where: str) -> None:
    """Unknown keys in a foreign-format section -> ConfigError with the closest valid key."""
    allowed = list(allowed)
    for k in mapping:
        if k not in allowed:
            near = closest(str(k), allowed)
            fix = f"did you mean {near!r}?" if near else f"remove it (valid keys: {', '.join(sorted(allowed))})"
            raise ConfigError(where or "<root>", f"unknown key {k!r} (valid keys: {', '.join(sorted(allowed))})", fix)


def section(raw: dict, key: str, where: str) -> dict:
    """`raw[key]` as a mapping ({} when absent or null); anything else is a ConfigError."""
    v = raw.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(where, f"expected a mapping, got {v!r}", "write it as key: value pairs")
    return v


def class_name(target: Any, where: str) -> str:
    """The class name at the end of a dotted `target` string (taming's instantiate_from_config names)."""
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(where, f"expected a dotted class name string, got {target!r}",
                          "write e.g. taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator")
    return target.strip().rsplit(".", 1)[-1]


def reachable_attention(b: NativeBuilder, model_args: dict, where: str) -> None:
    """Drop ddconfig.attn_resolutions the encoder never reaches (both reference systems build no attention there)."""
    ddc = model_args.get("ddconfig")
    if not isinstance(ddc, dict):
        return
    attn, res, mult = ddc.get("attn_resolutions"), ddc.get("resolution", 256), ddc.get("ch_mult", [1, 1, 2, 2, 4])
    if not (isinstance(attn, list) and isinstance(res, int) and isinstance(mult, list) and mult
            and all(isinstance(r, int) for r in attn)):
        return  # the strict schema checks report malformed values
    used = [res // 2**i for i in range(len(mult))]
    keep, drop = [r for r in attn if r in used], [r for r in attn if r not in used]
    if drop:
        b.native.setdefault("model", {}).setdefault("ddconfig", {})["attn_resolutions"] = keep
        b.note(f"{where}.ddconfig.attn_resolutions: {drop} never occur (this encoder works at {used}), so no "
               "attention is built there (the system this format comes from builds none there either); the middle "
               "block keeps its attention")


__all__ = ["reachable_attention", "Mapped", "NativeBuilder", "translate_error", "check_keys", "section", "class_name", "same_value"]
