"""Property: whatever a user writes (random or mutated configs, broken files, odd --set values), the readers either
return a Config or raise ConfigError; no other exception (no traceback) ever escapes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqforge.config import Config, parse_config
from vqforge.config.jsonc import loads_jsonc
from vqforge.config.readers import FIELD_PATHS, loads_yaml, read_raw
from vqforge.config.seed import TOP_KEYS, seed_to_native
from vqforge.config.taming import taming_to_native
from vqforge.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.iterdir())
EXAMPLE_RAWS = [read_raw(p) for p in EXAMPLE_FILES]
EXAMPLE_TEXTS = [(p.suffix, p.read_text()) for p in EXAMPLE_FILES]
KNOWN_KEYS = sorted({"model", "loss", "data", "train", "log", "lightning", "params", "target", *TOP_KEYS,
                     *(p.rsplit(".", 1)[-1] for p in FIELD_PATHS)})
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 300)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6)
           | st.sampled_from(["EMAVQ", "vqvae2", "TamingVQGAN", "GumbelVQ", "1e-4", "cosine", "hinge", "cuda:0"]))
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=10)


def _slots(obj: Any, out: list) -> list:
    """Every (container, key) position inside a nested dict/list."""
    if isinstance(obj, dict):
        for k in list(obj):
            out.append((obj, k))
            _slots(obj[k], out)
    elif isinstance(obj, list):
        for i in range(len(obj)):
            out.append((obj, i))
            _slots(obj[i], out)
    return out


def _swap_type(v: Any) -> Any:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return [v] if isinstance(v, int) else str(v)
    if isinstance(v, str):
        return {"value": v}
    if isinstance(v, list):
        return v[0] if v else 0
    if isinstance(v, dict):
        return list(v.values())
    return True


@st.composite
def mutated_configs(draw) -> dict:
    raw = copy.deepcopy(draw(st.sampled_from(EXAMPLE_RAWS)))
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(raw, [])
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["drop", "swap_type", "random_value", "rename", "add_key"]))
        if op == "drop":
            del container[key]
        elif op == "swap_type":
            container[key] = _swap_type(container[key])
        elif op == "random_value":
            container[key] = draw(values)
        elif op == "rename" and isinstance(container, dict):
            container[draw(keys)] = container.pop(key)
        elif op == "add_key" and isinstance(container, dict):
            container[draw(keys)] = draw(values)
    return raw


def _only_config_error(fn, *args) -> None:
    try:
        out = fn(*args)
    except ConfigError as e:
        assert str(e)  # a message, never empty
        return
    if fn is parse_config:
        assert isinstance(out, Config)


@SETTINGS
@given(mutated_configs())
def test_mutated_examples_raise_only_config_error(raw):
    _only_config_error(parse_config, raw)
    if any(k in raw for k in TOP_KEYS):
        _only_config_error(seed_to_native, copy.deepcopy(raw))
    if "model" in raw or "lightning" in raw:
        _only_config_error(taming_to_native, copy.deepcopy(raw))


@SETTINGS
@given(st.dictionaries(keys, values, max_size=5))
def test_random_configs_raise_only_config_error(raw):
    _only_config_error(parse_config, raw)
    for fmt in ("native", "seed", "taming"):
        _only_config_error(parse_config, raw, (), fmt)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLE_TEXTS), st.data())
def test_broken_files_raise_only_config_error(example, data):
    suffix, text = example
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 12)))
        text = text[:i] + data.draw(st.text(alphabet=' \n\t{}[]",:/*#-&!|>0123456789.eaZ', max_size=4)) + text[j:]
    loads = loads_jsonc if suffix == ".json" else loads_yaml
    try:
        raw = loads(text, f"x{suffix}")
    except ConfigError:
        return
    if isinstance(raw, dict):
        _only_config_error(parse_config, raw, ["data.train=[x]"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELD_PATHS) | st.text(max_size=10), st.text(max_size=10)), max_size=3))
def test_random_overrides_raise_only_config_error(pairs):
    raw = EXAMPLE_RAWS[0]
    _only_config_error(parse_config, copy.deepcopy(raw), [f"{k}={v}" for k, v in pairs])
