"""Read a config file (native, seed or taming format) into the one schema. (Minimal native reader; extended later.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import ConfigError
from .parse import from_dict, to_dict
from .schema import Config


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def parse_config(raw: dict, overrides: Iterable[str] = (), fmt: str = "native") -> Config:
    raw = copy.deepcopy(raw)
    explicit: set[str] = set()
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError("--set", f"{ov!r} is not KEY=VALUE", "write e.g. --set train.lr=1e-4")
        k, v = ov.split("=", 1)
        _set_dotted(raw, k.strip(), yaml.safe_load(v))
    cfg = from_dict(Config, raw, "", explicit)
    cfg._explicit = explicit
    cfg._format = fmt
    cfg.check()
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    path = Path(path)
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return parse_config(raw or {}, overrides)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
