"""`vqforge check-config` and `--set` on all three formats; every schema field can be set and is dumped."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from vqforge.cli import main
from vqforge.config import Config, dump_yaml, field_paths, parse_config
from vqforge.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"


def run(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (yaml.safe_load(out) if code == 0 else None), err


@pytest.mark.parametrize("name, extra", [
    ("seed_taming_emavq.json", []),
    ("seed_vqvae2.json", []),
    ("taming_vqgan.yaml", ["--set", "data.train=[imgs/]"]),
    ("native_emavq.yaml", []),
])
def test_check_config_prints_resolved_native_yaml(name, extra, capsys):
    path = str(EXAMPLES / name)
    code, out, err = run(["check-config", path, *extra], capsys)
    assert code == 0, err
    assert set(out) == {"model", "loss", "data", "train", "log"}
    assert parse_config(out)._format == "native"  # the printout is itself a valid native config
    # --set applies after mapping, with dotted native keys, on every format
    code, out2, err = run(["check-config", path, *extra, "--set", "model.n_embed=32", "--set", "train.num_steps=5",
                           "--set", "data.batch_size=3", "--set", "model.quantizer.beta=0.5"], capsys)
    assert code == 0, err
    assert (out2["model"]["n_embed"], out2["train"]["num_steps"], out2["data"]["batch_size"]) == (32, 5, 3)
    assert out2["model"]["quantizer"]["beta"] == 0.5
    assert out["model"]["n_embed"] != 32 and out["train"]["num_steps"] != 5


def test_check_config_warnings_and_overrides_are_explicit(capsys):
    path = str(EXAMPLES / "seed_taming_emavq.json")
    code, out, err = run(["check-config", path, "--set", "loss.use_gan=false", "--set", "train.disc_update_every=5"], capsys)
    assert code == 0
    assert out["loss"]["use_gan"] is False
    lines = [l for l in err.splitlines() if l.startswith("warning: ")]
    assert any(l.startswith("warning: loss.disc_weight (from model_args.lossconfig.params.disc_weight): has no effect") for l in lines)
    assert any(l.startswith("warning: train.disc_update_every (from --set train.disc_update_every)") for l in lines)
    assert any(l.startswith("warning: loss.disc_start (from model_args.lossconfig.params.disc_start)") for l in lines)


@pytest.mark.parametrize("name, sets, words", [
    ("seed_taming_emavq.json", ["train.lrr=1"], ["--set train.lrr", "did you mean 'train.lr'"]),
    ("taming_vqgan.yaml", ["data.train=[x]", "model.ddconfig.ch_mult=[]"], ["--set model.ddconfig.ch_mult", "is empty"]),
    ("native_emavq.yaml", ["model.n_embed=big"], ["expected an integer"]),
    ("native_emavq.yaml", ["model.quantizer"], ["is not KEY=VALUE"]),
    ("native_emavq.yaml", ["model.quantizer={beta: 1}"], ["is a section"]),
    ("native_emavq.yaml", ["model.n_embed=[1, 2"], ["--set model.n_embed", "YAML syntax error"]),
    ("native_emavq.yaml", ["train.base_learning_rate=1e-6"], ["train.lr", "--set train.base_learning_rate"]),
])
def test_check_config_errors_exit_2(name, sets, words, capsys):
    argv = ["check-config", str(EXAMPLES / name)]
    for s in sets:
        argv += ["--set", s]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    for w in words:
        assert w in err


def test_check_config_user_mismatch_exit_2(tmp_path, capsys):
    raw = {"model_type": "vqvae2",
           "model_args": {"model_variant": "EMAVQ",
                          "lossconfig": {"target": "models.taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                         "params": {"disc_start": 10000, "disc_weight": 0.8}}},
           "train_args": {"use_gan": False}}
    p = tmp_path / "taming.json"
    p.write_text("{\n  // the user's file\n" + json.dumps(raw)[1:-1] + ",\n}\n")
    code, _, err = run(["check-config", str(p)], capsys)
    assert code == 2
    assert "model_args.model_variant" in err and "'EMAVQ' is a taming variant" in err
    assert '"model_type": "TamingVQGAN"' in err


def test_check_config_syntax_error(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text('{\n  "model_type": "vqvae2"\n  "model_args": {}\n}\n')
    code, _, err = run(["check-config", str(p)], capsys)
    assert code == 2 and "line 3, column 3" in err


# -------------------------------------------------------------------------------------- every field via --set + dump

BASE = {"model": {"ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                               "resolution": 32, "z_channels": 8}},
        "data": {"train": ["imgs/"], "resolution": 32}}
# fields whose new value needs a companion change to stay valid
COMPANIONS = {"model.vqvae2.nb_levels": ["model.vqvae2.scaling_rates=[2, 2, 2]"],
              "data.shard_id": ["data.num_shards=4"],  # a shard index needs more than one shard
              # a VQ model quantizes z_channels channels: double_z (a KL-autoencoder switch) is refused for taming
              "model.ddconfig.double_z": ["model.family=vqvae2"],
              "model.vqvae2_optvq.nb_levels": ["model.vqvae2_optvq.scaling_rates=[2, 2, 2, 2]"],
              "model.vqvae2_optvq.scaling_rates": ["model.vqvae2_optvq.nb_levels=1"]}
# fields whose valid values a type alone cannot propose
VALUES = {"data.sample_photos": [["rocket", "retina"]]}


def _field_type(path: str):
    cls, tp = Config, None
    for part in path.split("."):
        tp = get_type_hints(cls)[part]
        inner = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (Union, types.UnionType) else [tp]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            cls = inner[0]
    return tp


def _candidates(tp, default) -> list[Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        out = [None] if default is not None else []
        for a in get_args(tp):
            if a is not type(None):
                out += _candidates(a, None if default is None else default)
        return out
    if origin is Literal:
        return [a for a in get_args(tp) if a != default]
    if origin is list:
        (inner,) = get_args(tp)
        if inner is int:
            return [[1, 2, 2], [16], [2, 2], [1], [32, 64, 64], [32, 64]]  # GroupNorm widths; a [lo, hi] size range
        if inner is float:
            return [[0.1, 0.2]]
        return [["a/", "b/"]]
    if tp is bool:
        return [not default]
    if tp is int:
        d = default or 0
        return [d + 1, d * 2, 1, 2, 4, 8, 16, 64, 128]
    if tp is float:
        d = default or 0.0
        return [d * 0.5, d + 0.1, 0.1, 0.5, 2.0]
    if tp is str:
        return ["cpu", "some/dir"]
    raise AssertionError(f"no candidates for {tp}")


def _get(obj, path: str):
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", field_paths(Config))
def test_every_field_can_be_set_and_is_dumped(path):
    default_cfg = parse_config(json.loads(json.dumps(BASE)))
    default = _get(default_cfg, path)
    tried = []
    for value in VALUES.get(path) or _candidates(_field_type(path), default):
        if value == default:
            continue
        item = f"{path}={json.dumps(value)}"  # JSON is YAML: what a user types after --set
        try:
            cfg = parse_config(json.loads(json.dumps(BASE)), [item, *COMPANIONS.get(path, [])])
        except ConfigError as e:
            tried.append(f"{item}: {e}")
            continue
        assert _get(cfg, path) == value and path in cfg._explicit
        dumped = yaml.safe_load(dump_yaml(cfg))
        assert _get(dumped, path) == value
        assert parse_config(dumped) == cfg
        return
    pytest.fail(f"no value could be set for {path}: {tried}")


def test_field_paths_cover_the_dump():
    dumped = yaml.safe_load(dump_yaml(parse_config(json.loads(json.dumps(BASE)))))
    flat = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            p = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(v, p)
            else:
                flat.add(p)

    walk(dumped)
    assert flat == set(field_paths(Config))
