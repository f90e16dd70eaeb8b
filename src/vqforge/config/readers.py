"""Read a config file (native, seed, later seed or taming format) into the one schema.

    load_config(path, overrides=())  -> Config            (emits one ConfigWarning listing ineffective settings)
    load_config_with_warnings(path, overrides=())  -> (Config, [warning lines])   (no warnings.warn; for the CLI)
    parse_config(raw, overrides=(), fmt="auto")  -> Config (no warning)
    dump_yaml(cfg)  -> native YAML text that parse_config reads back to an equal Config

Formats are told apart by their top-level keys (see `detect_format`). Foreign formats are mapped to the native
layout first (seed.py, taming.py); `--set KEY=VALUE` overrides then apply to native dotted keys, for every format;
the strict converter (parse.py) and the schema checks run last. Every error is a `ConfigError` naming the user's key.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import ConfigError
from .effects import ConfigWarning, ineffective
from .jsonc import loads_jsonc
from .mapping import Mapped, container_for, translate_error
from .parse import closest, field_paths, from_dict, to_dict
from .schema import Config, ModelConfig, DataConfig
from .later import SECTIONS as LATER_SECTIONS
from .later import TOP_KEYS as LATER_KEYS
from .later import later_to_native
from .seed import TOP_KEYS as SEED_KEYS
from .seed import seed_to_native
from .taming import taming_to_native

FORMATS = ("native", "seed", "taming", "later")
NATIVE_SECTIONS = ("model", "loss", "data", "train", "log")
_TAMING_MODEL_KEYS = ("target", "params", "base_learning_rate")
_TAMING_DATA_KEYS = ("target", "params")
_FORMAT_HELP = ("native: top-level model/loss/data/train/log; seed format: model_type/model_args/train_args/"
                "data_args/data_process/use_images/use_wandb/project_name; its later format: model_type/model_args + "
                "data/train/wandb; taming YAML: model.target + model.params (+ data.params, lightning)")
FIELD_PATHS: tuple[str, ...] = tuple(field_paths(Config))
SUFFIXES = {".json": "json", ".jsonc": "json", ".yaml": "yaml", ".yml": "yaml"}


# ----------------------------------------------------------------------------------------------------- file reading

class _DuplicateKey(Exception):
    def __init__(self, key: Any, mark: Any):
        self.key, self.mark = key, mark


class _StrictYAMLLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: list[Any] = []
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<:` merges may legitimately be overridden by explicit keys
                if isinstance(key_node, yaml.ScalarNode):
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark)
                    seen.append(key)
        return super().construct_mapping(node, deep=deep)


def loads_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; syntax errors and duplicate keys are ConfigErrors with line and column."""
    try:
        return yaml.load(text, Loader=_StrictYAMLLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise ConfigError(source, f"key {e.key!r} appears twice in the same mapping at line {e.mark.line + 1}, "
                                  f"column {e.mark.column + 1} (YAML would keep only the last)",
                          f"keep one {e.key!r} entry") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ConfigError(source, f"YAML syntax error{where}: {what}", "fix the YAML at that position") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, f"YAML syntax error: {e}", "fix the YAML") from None
    except (ValueError, TypeError, RecursionError, OverflowError) as e:  # e.g. unhashable keys, huge numbers
        raise ConfigError(source, f"cannot read the YAML: {e}", "fix the value") from None


def read_raw(path: str | Path) -> dict:
    """Read a .json/.jsonc (comments and trailing commas allowed) or .yaml/.yml file into a plain dict."""
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise ConfigError(str(p), f"unsupported file extension {p.suffix!r}", "use .json, .jsonc, .yaml or .yml")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (some Windows editors) is not content
    except FileNotFoundError:
        raise ConfigError(str(p), "file not found", "check the path") from None
    except IsADirectoryError:
        raise ConfigError(str(p), "is a directory, not a config file", "give the config file itself") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), f"is not UTF-8 text ({e.reason} at byte {e.start})", "save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(str(p), f"cannot be read: {e.strerror}", "check the file's permissions") from None
    raw = loads_jsonc(text, str(p)) if kind == "json" else loads_yaml(text, str(p))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(p), f"the top level must be a mapping, got {type(raw).__name__}",
                          "write the config as key: value pairs")
    return raw


# ------------------------------------------------------------------------------------------------- format detection

def _format_marks(raw: dict) -> dict[str, list[str]]:
    """Which of the config's keys identify each format."""
    marks: dict[str, list[str]] = {f: [] for f in FORMATS}
    marks["seed"] = [k for k in SEED_KEYS if k in raw]
    native_fields = {"model": {f for f in ModelConfig.__dataclass_fields__ if not f.startswith("_")},
                     "data": {f for f in DataConfig.__dataclass_fields__ if not f.startswith("_")}}
    for k in ("loss", "train", "log"):
        if k in raw:
            marks["native"].append(k)
    if "lightning" in raw:
        marks["taming"].append("lightning")
    for sec, taming_keys in (("model", _TAMING_MODEL_KEYS), ("data", _TAMING_DATA_KEYS)):
        v = raw.get(sec)
        if isinstance(v, dict):
            marks["taming"] += [f"{sec}.{k}" for k in taming_keys if k in v]
            marks["native"] += [f"{sec}.{k}" for k in v if k in native_fields[sec] and k not in taming_keys]
    return marks


def detect_format(raw: dict) -> str:
    """'native', 'seed' or 'taming' from the top-level keys; a mix or none -> ConfigError."""
    if not raw:
        return "native"
    if "model_type" in raw and any(k in raw for k in LATER_SECTIONS) and set(raw) <= set(LATER_KEYS):
        return "later"  # model_type + data/train/wandb sections: the seed format's later version
    marks = _format_marks(raw)
    found = [f for f in FORMATS if marks[f]]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        desc = "; ".join(f"{f} format ({', '.join(marks[f])})" for f in found)
        raise ConfigError("<root>", f"mixes config formats: {desc}", f"write one format: {_FORMAT_HELP}")
    if set(raw) <= {"model", "data"}:
        return "native"  # e.g. an (empty) model section only: read natively, strict checks say the rest
    known = list(NATIVE_SECTIONS) + list(SEED_KEYS) + ["lightning"]
    unknown = [k for k in raw if k not in known]
    hint = ""
    if unknown:
        near = closest(str(unknown[0]), known)
        hint = f" ({unknown[0]!r}: did you mean {near!r}?)" if near else ""
    raise ConfigError("<root>", f"is not a vqforge config: none of its keys {sorted(map(str, raw))} identify a format{hint}",
                      f"keys that identify each format: {_FORMAT_HELP}")


# ------------------------------------------------------------------------------------------------------- overrides

def parse_override(item: str) -> tuple[str, Any]:
    """'train.lr=1e-4' -> ('train.lr', 1e-4); the value is YAML ('[1, 2]', 'null', 'true' work)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError("--set", f"{item!r} is not KEY=VALUE", "write e.g. --set train.lr=1e-4")
    key, text = item.split("=", 1)
    key = key.strip()
    if key not in FIELD_PATHS:
        below = [p for p in FIELD_PATHS if p.startswith(key + ".")]
        if below:
            raise ConfigError(f"--set {key}", "is a section, not a setting",
                              f"set its fields one by one, e.g. --set {below[0]}=...")
        near = closest(key, FIELD_PATHS)
        fix = f"did you mean {near!r}?" if near else "use a dotted native key such as train.lr or model.n_embed"
        raise ConfigError(f"--set {key}", "unknown config key (--set takes dotted native keys, for every format)", fix)
    value = loads_yaml(text, f"--set {key}") if text.strip() else None
    return key, value


def _apply_overrides(mapped: Mapped, overrides: Iterable[str]) -> set[str]:
    if isinstance(overrides, str):
        overrides = [overrides]
    done: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        try:
            cur = container_for(mapped.native, key)
        except ConfigError as e:
            raise translate_error(e, mapped.sources) from None
        cur[key.rsplit(".", 1)[-1]] = value
        for p in [p for p in mapped.sources if p == key or p.startswith(key + "[")]:
            del mapped.sources[p]
        mapped.sources[key] = f"--set {key}"
        done.add(key)
    return done


# ----------------------------------------------------------------------------------------------------------- parse

def _native_mapped(raw: dict) -> Mapped:
    return Mapped(copy.deepcopy(raw), set(), {}, [], "native")


def _given_twice(cfg: Config, sources: dict[str, str]) -> None:
    """Native settings that contradict each other when both are given."""
    ex = cfg._explicit
    if "train.lr" in ex and "train.base_learning_rate" in ex and cfg.train.base_learning_rate is not None:
        a, b = sources.get("train.lr", "train.lr"), sources.get("train.base_learning_rate", "train.base_learning_rate")
        raise ConfigError(
            a, f"is given together with {b}: lr is the learning rate itself, while base_learning_rate computes "
               "it as base × batch size × processes × grad_accum_steps (taming's rule)",
            "give only one of them (with --set: train.base_learning_rate=null keeps lr)")


def _cross_checks(cfg: Config, sources: dict[str, str]) -> None:
    """Contradictions the section checks cannot see."""
    if cfg.model.family == "taming" and cfg.model.ddconfig.double_z:
        raise translate_error(ConfigError("model.ddconfig.double_z", "is true, which doubles the encoder's output for "
                                          "a KL autoencoder; a VQ model quantizes z_channels channels",
                                          "set double_z: false"), sources)


def _parse(raw: Any, overrides: Iterable[str], fmt: str, name: str | None = None
           ) -> tuple[Config, list[tuple[str, str]], Mapped]:
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"the config must be a mapping, got {type(raw).__name__}", "write key: value pairs")
    if fmt == "auto":
        fmt = detect_format(raw)
    if fmt == "native":
        mapped = _native_mapped(raw)
    elif fmt == "seed":
        mapped = seed_to_native(raw, name)
    elif fmt == "taming":
        mapped = taming_to_native(raw)
    elif fmt == "later":
        mapped = later_to_native(raw)
    else:
        raise ConfigError("fmt", f"unknown config format {fmt!r}", "use auto, native, seed, taming or later")
    set_keys = _apply_overrides(mapped, overrides)

    derived: set[str] = set()
    if fmt == "native":
        model = mapped.native.get("model")
        # the VQ-VAE-2 family has no variants: an absent variant means none (the schema default names a taming one)
        if isinstance(model, dict) and model.get("family") == "vqvae2" and "variant" not in model:
            model["variant"] = None
            derived.add("model.variant")
    seen: set[str] = set()
    try:
        cfg = from_dict(Config, mapped.native, "", seen)
    except ConfigError as e:
        raise translate_error(e, mapped.sources) from None
    cfg._explicit = ((seen - derived) if fmt == "native" else set(mapped.explicit)) | set_keys
    cfg._format = fmt
    _given_twice(cfg, mapped.sources)
    _cross_checks(cfg, mapped.sources)
    return cfg, ineffective(cfg), mapped


def _warning_lines(mapped: Mapped, found: list[tuple[str, str]]) -> list[str]:
    lines = list(mapped.notes)
    for path, why in found:
        src = mapped.sources.get(path)
        label = path if src is None or src == path else f"{path} (from {src})"
        lines.append(f"{label}: has no effect: {why}")
    return lines


def parse_config_with_warnings(raw: dict, overrides: Iterable[str] = (), fmt: str = "auto", name: str | None = None
                               ) -> tuple[Config, list[str]]:
    """Like `parse_config`, and also return the warning lines (reader notes + ineffective settings).

    `name` is the config file's stem; the seed format's run directory is `train_args.folder_name` + "_" + name.
    """
    cfg, found, mapped = _parse(raw, overrides, fmt, name)
    return cfg, _warning_lines(mapped, found)


def parse_config(raw: dict, overrides: Iterable[str] = (), fmt: str = "auto", name: str | None = None) -> Config:
    """A parsed config dict (native, seed, taming or later; `fmt="auto"` detects) -> validated Config. No warning."""
    return _parse(raw, overrides, fmt, name)[0]


def load_config_with_warnings(path: str | Path, overrides: Iterable[str] = ()) -> tuple[Config, list[str]]:
    """Read and validate a config file; return it with its warning lines (nothing is emitted)."""
    raw = read_raw(path)
    # the name up to its first dot, as the previous system cut it for run directories ("a.b.json" -> "a")
    return parse_config_with_warnings(raw, overrides, name=Path(path).name.split(".")[0])


def format_warnings(lines: list[str]) -> str:
    return "config settings worth knowing:\n" + "\n".join(f"  - {line}" for line in lines)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read and validate a config file; one `ConfigWarning` lists every setting without effect."""
    cfg, lines = load_config_with_warnings(path, overrides)
    if lines:
        warnings.warn(format_warnings(lines), ConfigWarning, stacklevel=2)
    return cfg


def to_native_dict(cfg: Config) -> dict:
    """The resolved config as a native dict that parses back to the same Config (what runs and exports store).

    `train.lr` is left out when base_learning_rate decides the rate: writing both would read back as a conflict.
    """
    d = to_dict(cfg)
    if cfg.train.base_learning_rate is not None:
        del d["train"]["lr"]
    return d


def dump_yaml(cfg: Config) -> str:
    """The resolved config as native YAML."""
    return yaml.dump(to_native_dict(cfg), Dumper=_Dumper, sort_keys=False, width=120)


class _Dumper(yaml.SafeDumper):
    """Short lists of numbers/strings on one line ([1, 2, 2]); everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(isinstance(v, (int, float, str, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


__all__ = [
    "ConfigWarning", "FORMATS", "detect_format", "dump_yaml", "format_warnings", "load_config",
    "load_config_with_warnings", "loads_yaml", "parse_config", "parse_config_with_warnings", "parse_override", "read_raw",
    "to_native_dict",
]
