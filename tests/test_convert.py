"""Checkpoint import and the exported-model format: safe unpickling, `vqforge convert`, save/load of exports."""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vqforge import CheckpointError, ConfigError, build_model, from_pretrained
from vqforge.cli import main as cli_main
from vqforge.config.schema import Config, DataConfig, DDConfig, ModelConfig, QuantizerConfig
from vqforge.models.convert import convert_taming_checkpoint, split_taming_state_dict
from vqforge.models.pretrained import load_any, load_weights, save_pretrained
from vqforge.safe_pickle import InertObject, extract_state_dict, load_checkpoint, load_state_dict_file


from conftest import GOLDEN


# --- helpers -----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fake_modules(*names: str):
    """Importable stand-ins for Lightning modules, so pickle can write their class names; removed afterwards."""
    added = []
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = types.ModuleType(sub)
                added.append(sub)
    try:
        yield [sys.modules[n] for n in names]
    finally:
        for sub in added:
            del sys.modules[sub]


def save_lightning_ckpt(path: Path, state_dict: dict, **extra) -> None:
    """A checkpoint laid out like PyTorch Lightning 1.x writes it, with Lightning's own classes inside."""
    with fake_modules("pytorch_lightning.utilities.parsing", "pytorch_lightning.callbacks.model_checkpoint") as (
        parsing, callbacks,
    ):
        attribute_dict = type("AttributeDict", (dict,), {"__module__": parsing.__name__})
        parsing.AttributeDict = attribute_dict
        model_checkpoint = type("ModelCheckpoint", (), {"__module__": callbacks.__name__})
        callbacks.ModelCheckpoint = model_checkpoint
        lin = torch.nn.Linear(2, 2)
        opt = torch.optim.Adam(lin.parameters())
        lin(torch.ones(1, 2)).sum().backward()
        opt.step()
        ckpt = {
            "epoch": 3,
            "global_step": 5,
            "pytorch-lightning_version": "1.0.8",
            "state_dict": state_dict,
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [],
            "callbacks": {model_checkpoint: {"best_model_score": torch.tensor(0.25), "current_score": np.float64(0.5),
                                             "best_model_path": "logs/last.ckpt"}},
            "hparams_name": "kwargs",
            "hyper_parameters": attribute_dict(lr=4.5e-6, args=argparse.Namespace(base="cfg.yaml", gpus="0,")),
        }
        ckpt.update(extra)
        torch.save(ckpt, path)


def golden_cfg(variant: str = "VQModel") -> Config:
    ref = json.loads((GOLDEN / "reference.json").read_text())["model"]
    model = ModelConfig(family="taming", variant=variant, n_embed=ref["n_embed"], embed_dim=ref["embed_dim"],
                        ddconfig=DDConfig(**ref["ddconfig"]))
    return Config(model=model, data=DataConfig(source="sample_photos", resolution=32))


def tiny_cfg(variant: str = "VQModel", **quantizer) -> Config:
    dd = DDConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], z_channels=8, resolution=8)
    model = ModelConfig(family="taming", variant=variant, n_embed=16, embed_dim=8, ddconfig=dd,
                        quantizer=QuantizerConfig(**quantizer))
    return Config(model=model, data=DataConfig(source="sample_photos", resolution=8))


def trained_tiny(cfg: Config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    model(torch.rand(4, 3, 8, 8) * 2 - 1)  # moves EMA codebook statistics away from their initial values
    return model.eval()


def golden_taming_state_dict() -> dict[str, torch.Tensor]:
    sd = dict(load_file(str(GOLDEN / "vqmodel.safetensors")))
    sd.update(load_file(str(GOLDEN / "discriminator.safetensors")))  # keys loss.discriminator.main.N.*
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.rand(1, 64, 1, 1)
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.rand(64, 3, 3, 3)
    return sd


X = torch.rand(2, 3, 8, 8) * 2 - 1


# --- safe_pickle -------------------------------------------------------------------------------------------------------
def test_lightning_checkpoint_loads_without_lightning(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "last.ckpt"
    save_lightning_ckpt(path, sd)
    assert "pytorch_lightning" not in sys.modules
    ckpt = load_checkpoint(path)
    assert "pytorch_lightning" not in sys.modules  # nothing was imported
    assert ckpt["global_step"] == 5 and ckpt["epoch"] == 3
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in sd.items())
    assert torch.is_tensor(ckpt["optimizer_states"][0]["state"][0]["exp_avg"])
    hp = ckpt["hyper_parameters"]
    assert isinstance(hp, InertObject) and hp.qualname == "pytorch_lightning.utilities.parsing.AttributeDict"
    assert hp["lr"] == 4.5e-6
    assert isinstance(hp["args"], InertObject) and hp["args"].qualname == "argparse.Namespace"
    assert hp["args"].state == {"base": "cfg.yaml", "gpus": "0,"}
    (cb_key, cb_state), = ckpt["callbacks"].items()
    assert cb_key.qualname == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert float(cb_state["best_model_score"]) == 0.25 and float(cb_state["current_score"]) == 0.5
    assert extract_state_dict(ckpt).keys() == sd.keys()


class _RunsShell:
    """An object whose unpickling runs a shell command (the classic malicious pickle)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsShell(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "contains code" in msg and "not loaded" in msg and "system" in msg
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_weights(torch.nn.Linear(1, 1), path)  # the init_from path refuses it too
    assert not marker.exists()
    # the file really is dangerous: an unrestricted load runs the command
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_state_written_onto_a_function_is_refused(tmp_path):
    # protocol 2: GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with slot state {"__defaults__": ()}
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b.")
    path = tmp_path / "patch.pt"
    path.write_bytes(payload)
    before = torch._utils._rebuild_tensor_v2.__defaults__
    with pytest.raises(CheckpointError, match="not loaded"):
        load_checkpoint(path)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    with pytest.raises(CheckpointError, match="builtins.eval"):
        path.write_bytes(b"\x80\x02c__builtin__\neval\nX\x04\x00\x00\x001+1\x85R.")
        load_checkpoint(path)


def test_plain_state_dict_and_bad_files(tmp_path):
    lin = torch.nn.Linear(3, 2)
    torch.save(lin.state_dict(), tmp_path / "sd.pt")
    sd = load_state_dict_file(tmp_path / "sd.pt")
    assert sd.keys() == lin.state_dict().keys() and torch.equal(sd["weight"], lin.weight)

    (tmp_path / "junk.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"epoch": 1, "note": "no weights"}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_state_dict_file(tmp_path / "meta.pt")


def test_inert_objects_pickle_again():
    obj = pickle.loads(pickle.dumps(argparse.Namespace(a=1)))  # sanity: real Namespace
    assert obj.a == 1
    from vqforge.safe_pickle import _inert_class

    inert = _inert_class("argparse.Namespace")()
    inert.__setstate__({"a": 1})
    again = pickle.loads(pickle.dumps(inert))
    assert isinstance(again, InertObject) and again.state == {"a": 1} and again.qualname == "argparse.Namespace"


# --- convert -----------------------------------------------------------------------------------------------------------
def test_split_taming_state_dict():
    parts = split_taming_state_dict(golden_taming_state_dict())
    assert "quantize.embedding.weight" in parts.model and not any(k.startswith("loss.") for k in parts.model)
    assert parts.discriminator and all(k.startswith("main.") for k in parts.discriminator)
    assert sorted(parts.dropped) == ["loss.perceptual_loss.lin0.model.1.weight", "loss.perceptual_loss.net.slice1.0.weight"]


def test_convert_fake_lightning_checkpoint(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    save_lightning_ckpt(ckpt, golden_taming_state_dict())
    out = tmp_path / "converted"
    rep = convert_taming_checkpoint(ckpt, None, out, config=golden_cfg())
    assert rep.global_step == 5 and rep.epoch == 3 and len(rep.dropped) == 2
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "discriminator.safetensors", "model.safetensors"]

    golden = load_file(str(GOLDEN / "vqmodel.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    assert saved.keys() == golden.keys() and all(torch.equal(saved[k], golden[k]) for k in golden)
    disc_golden = load_file(str(GOLDEN / "discriminator.safetensors"))
    disc = load_file(str(out / "discriminator.safetensors"))
    assert set(disc) == {k[len("loss.discriminator."):] for k in disc_golden}
    assert all(torch.equal(disc[k[len("loss.discriminator."):]], v) for k, v in disc_golden.items())

    model = from_pretrained(out)
    ex = load_file(str(GOLDEN / "expected.safetensors"))
    with torch.no_grad():
        assert (model(ex["x"]).reconstruction - ex["recon"]).abs().max() <= 1e-5


def test_convert_missing_key_is_listed(tmp_path):
    sd = golden_taming_state_dict()
    del sd["decoder.conv_out.bias"]
    sd["encoder.extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "last.ckpt"
    save_lightning_ckpt(ckpt, sd)
    with pytest.raises(CheckpointError) as e:
        convert_taming_checkpoint(ckpt, None, tmp_path / "out", config=golden_cfg())
    msg = str(e.value)
    assert "missing from the file (1): decoder.conv_out.bias" in msg
    assert "unexpected in the file (1): encoder.extra.weight" in msg
    assert "wrong config or variant" in msg
    assert not (tmp_path / "out" / "config.json").exists()


def test_convert_with_wrong_variant_names_the_cause(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    save_lightning_ckpt(ckpt, golden_taming_state_dict())
    with pytest.raises(CheckpointError) as e:
        convert_taming_checkpoint(ckpt, None, tmp_path / "out", config=golden_cfg("EMAVQ"))
    msg = str(e.value)
    assert "quantize.embedding.cluster_size" in msg and "variant VQModel" in msg


def test_convert_command_with_taming_yaml(tmp_path, capsys):
    ref = json.loads((GOLDEN / "reference.json").read_text())
    dd = ref["model"]["ddconfig"]
    yaml_text = f"""
model:
  base_learning_rate: 4.5e-6
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {ref["model"]["embed_dim"]}
    n_embed: {ref["model"]["n_embed"]}
    ddconfig: {json.dumps(dd)}
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {{disc_start: 100, disc_num_layers: 2, disc_ndf: 16, disc_weight: 0.8, codebook_weight: 1.0}}
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 2
    train: {{target: taming.data.custom.CustomTrain, params: {{training_images_list_file: t.txt, size: 32}}}}
"""
    (tmp_path / "taming.yaml").write_text(yaml_text)
    ckpt = tmp_path / "last.ckpt"
    save_lightning_ckpt(ckpt, golden_taming_state_dict())
    out = tmp_path / "out"
    assert cli_main(["convert", str(ckpt), "--config", str(tmp_path / "taming.yaml"), "--out", str(out)]) == 0
    assert "global_step 5" in capsys.readouterr().out
    model, cfg = load_any(out)
    assert cfg.model.variant == "VQModel" and cfg.model.ddconfig.ch_mult == dd["ch_mult"] and cfg.loss.disc_ndf == 16
    ex = load_file(str(GOLDEN / "expected.safetensors"))
    with torch.no_grad():
        assert torch.equal(model.encode(ex["x"]), ex["indices"])


# --- exported models ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,quantizer", [("VQModel", {}), ("EMAVQ", {}), ("GumbelVQ", {}),
                                               ("EMAVQ", {"rvq_levels": 2})])
def test_save_then_from_pretrained_gives_identical_outputs(tmp_path, variant, quantizer):
    cfg = tiny_cfg(variant, **quantizer)
    model = trained_tiny(cfg)
    out = save_pretrained(model, cfg, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    meta = json.loads((out / "config.json").read_text())
    assert meta["vqforge_format"] == 1 and meta["config"]["model"]["variant"] == variant
    loaded = from_pretrained(out)
    assert not loaded.training
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    with torch.no_grad():
        a, b = model(X), loaded(X)
    assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(a.indices, b.indices)


def test_save_pretrained_overwrites_and_rejects_an_invalid_config(tmp_path):
    cfg = tiny_cfg()
    save_pretrained(trained_tiny(cfg, seed=0), cfg, tmp_path / "e")
    second = trained_tiny(cfg, seed=1)
    save_pretrained(second, cfg, tmp_path / "e")
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path / "e")(X).reconstruction, second(X).reconstruction)
    bad = Config(model=cfg.model, data=DataConfig(source="sample_photos", resolution=9))  # 9 is not a multiple of 2
    with pytest.raises(ConfigError, match="data.resolution"):
        save_pretrained(second, bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.json").exists()


def make_run_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """RUN/checkpoints/step_00000002 (raw + EMA weights) and an older step_00000001; `latest` names step 2."""
    cfg = tiny_cfg("EMAVQ")
    raw, ema, old = trained_tiny(cfg, 0), trained_tiny(cfg, 1), trained_tiny(cfg, 2)
    ckpts = tmp_path / "run" / "checkpoints"
    save_pretrained(old, cfg, ckpts / "step_00000001")
    step = save_pretrained(raw, cfg, ckpts / "step_00000002")
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(step / "model_ema.safetensors"))
    (ckpts / "latest").write_text("step_00000002\n")
    return tmp_path / "run", raw, ema


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        return torch.equal(a(X).reconstruction, b(X).reconstruction)


def test_load_any_accepts_export_checkpoint_and_run_dirs(tmp_path):
    run, raw, ema = make_run_dir(tmp_path)
    step = run / "checkpoints" / "step_00000002"

    model, cfg = load_any(run)
    assert cfg.model.variant == "EMAVQ" and same_outputs(model, raw)
    model, _ = load_any(run, ema=True)
    assert same_outputs(model, ema) and not same_outputs(model, raw)
    model, _ = load_any(step)
    assert same_outputs(model, raw)
    assert same_outputs(from_pretrained(run), raw)
    model, _ = load_any(step / "model_ema.safetensors")
    assert same_outputs(model, ema)

    export = save_pretrained(model, cfg, tmp_path / "export")
    model, cfg2 = load_any(export)
    assert same_outputs(model, ema) and cfg2.model == cfg.model
    with pytest.raises(CheckpointError, match="model_ema.safetensors"):
        load_any(export, ema=True)


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_any(tmp_path / "nowhere")
    (tmp_path / "x.ckpt").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an exported model"):
        load_any(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="is a file"):
        from_pretrained(tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="vqforge convert"):
        load_any(tmp_path / "x.ckpt")

    cfg = tiny_cfg()
    export = save_pretrained(trained_tiny(cfg), cfg, tmp_path / "export")
    (export / "model.safetensors").rename(export / "moved.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_pretrained(export)
    (export / "moved.safetensors").rename(export / "model.safetensors")

    # config.json says EMAVQ, weights are VQModel's
    meta = json.loads((export / "config.json").read_text())
    meta["config"]["model"]["variant"] = "EMAVQ"
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(export)
    assert "quantize.embedding.cluster_size" in str(e.value) and "variant" in str(e.value)

    meta["vqforge_format"] = 99
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        from_pretrained(export)
    (export / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(export)
    (export / "config.json").write_text(json.dumps({"vqforge_format": 1, "config": {"model": {"n_embed": 1}}}))
    with pytest.raises(CheckpointError, match="n_embed"):
        from_pretrained(export)

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="step_00000009"):
        load_any(tmp_path / "run")


def test_load_weights_for_init_from(tmp_path):
    cfg = tiny_cfg()
    src = trained_tiny(cfg, seed=3)
    export = save_pretrained(src, cfg, tmp_path / "export")

    for path in (export, export / "model.safetensors"):
        target = trained_tiny(cfg, seed=4)
        assert not same_outputs(target, src)
        load_weights(target, path)
        assert same_outputs(target, src)

    # a taming .ckpt: loss.* entries are dropped, the rest must match exactly
    golden = build_model(golden_cfg())
    ckpt = tmp_path / "last.ckpt"
    save_lightning_ckpt(ckpt, golden_taming_state_dict())
    load_weights(golden, ckpt)
    ref = load_file(str(GOLDEN / "vqmodel.safetensors"))
    assert all(torch.equal(golden.state_dict()[k], v) for k, v in ref.items())

    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(tiny_cfg("GumbelVQ")), export)
    assert "quantize.embedding.weight" in str(e.value) and "GumbelVQ" in str(e.value)
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_weights(build_model(tiny_cfg()), ckpt)  # golden sizes into the tiny model
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(golden, tmp_path / "nope.ckpt")


# --- safe_pickle: no unbounded allocation (a small crafted file must not make the loader allocate) -----------------

def _proto2(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def _int(n: int) -> bytes:  # LONG1: any size of integer in a few bytes
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _refused(tmp_path, payload: bytes, *needles: str) -> str:
    import resource

    path = tmp_path / "crafted.pt"
    path.write_bytes(payload)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    # a refusal must come before any allocation: cap the address space so that a real attempt fails fast
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))
    try:
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    msg = str(e.value)
    assert "not loaded" in msg and "fix:" in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_bytearray_bytes_and_range_bombs_are_refused(tmp_path):
    # bytearray(10**12) / bytes(10**12): ~30 bytes of pickle asking for a terabyte
    _refused(tmp_path, _proto2(b"c__builtin__\nbytearray\n", _int(10**12), b"\x85R"), "bytearray(1000000000000)")
    _refused(tmp_path, _proto2(b"c__builtin__\nbytes\n", _int(10**12), b"\x85R"), "bytes(1000000000000)")
    # list(range(10**10)): range is not allowed at all
    _refused(tmp_path, _proto2(b"c__builtin__\nlist\n", b"c__builtin__\nxrange\n", _int(10**10), b"\x85R\x85R"),
             "builtins.range")


def test_tensor_type_cannot_be_called_with_a_size(tmp_path):
    _refused(tmp_path, _proto2(b"ctorch\nTensor\n", _int(10**11), b"\x85R"), "torch.Tensor")
    # NEWOBJ: torch.Tensor.__new__(torch.Tensor, 10**11)
    _refused(tmp_path, _proto2(b"ctorch\nTensor\n", _int(10**11), b"\x85\x81"), "torch.Tensor")
    # numpy.ndarray((10**12,)) and numpy's _reconstruct with a big shape
    _refused(tmp_path, _proto2(b"cnumpy\nndarray\n", _int(10**12), b"\x85\x85R"), "numpy.ndarray")
    _refused(tmp_path, _proto2(b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n", _int(10**12),
                               b"\x85U\x01b\x87R"), "shape")


def test_quantized_and_other_size_taking_rebuilds_are_refused(tmp_path):
    for name in ("_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass"):
        _refused(tmp_path, _proto2(b"ctorch._utils\n" + name.encode() + b"\n", b")R"), f"torch._utils.{name}")


def test_rebuild_from_type_v2_cannot_set_arbitrary_attributes(tmp_path):
    # torch._tensor._rebuild_from_type_v2(func, new_type, args, state) runs func(*args) and then setattr for each
    # state item, outside BUILD's guard: a pickle-chosen func or attribute is refused before anything runs
    head = b"ctorch._tensor\n_rebuild_from_type_v2\n"
    func_bytearray = _proto2(head, b"(c__builtin__\nbytearray\nctorch\nTensor\n", _int(8), b"\x85NtR")
    _refused(tmp_path, func_bytearray, "_rebuild_from_type_v2", "bytearray")
    # the allowed func and type, with a state that sets a dunder on the result
    evil_state = b"}X\x09\x00\x00\x00__class__ctorch\nTensor\ns"
    crafted = _proto2(head, b"(ctorch._utils\n_rebuild_tensor_v2\nctorch\nTensor\n)", evil_state, b"tR")
    _refused(tmp_path, crafted, "setting attributes", "__class__")
    # a hook attached by the rebuild is refused as well
    hooks = _proto2(b"ctorch._utils\n_rebuild_parameter\n(", b"ctorch\nTensor\n", b"\x88",
                    b"ccollections\nOrderedDict\n)R", b"K\x01c__builtin__\nprint\n", b"s", b"tR")
    _refused(tmp_path, hooks, "builtins.print")


def test_storage_sizes_are_checked_against_the_records(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path)
    raw = path.read_bytes()
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4.0))
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        pkl_name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        pkl = zf.read(pkl_name)
    # the storage's numel (K\x04) claims 4 floats; ask for 2**40 instead, keeping the record at 16 bytes
    idx = pkl.index(b"K\x04")
    big = pkl[:idx] + _int(1 << 40) + pkl[idx + 2:]
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, big if info.filename == pkl_name else src.read(info))
    _refused(tmp_path, out.getvalue(), "its record holds 16")


def test_zip_records_are_checked_against_the_file_size(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path)
    raw = bytearray(path.read_bytes())
    # claim a 2**40-byte record in the central directory (and its local header): more than the file holds
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    # patch every central-directory entry that names the storage record
    name = info.filename.encode()
    pos = 0
    patched = 0
    while True:
        pos = raw.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        n_len = int.from_bytes(raw[pos + 28:pos + 30], "little")
        if bytes(raw[pos + 46:pos + 46 + n_len]) == name:
            raw[pos + 20:pos + 24] = (0xFFFFFFF0).to_bytes(4, "little")  # compressed size
            raw[pos + 24:pos + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # uncompressed size
            patched += 1
        pos += 4
    assert patched == 1
    _refused(tmp_path, bytes(raw), "past the end")
    # a compressed (deflated) record is refused too: torch writes stored records, and inflating is unbounded
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for i in src.infolist():
            dst.writestr(i.filename, src.read(i), compress_type=zipfile.ZIP_DEFLATED)
    _refused(tmp_path, out.getvalue(), "compressed")


def test_legacy_storage_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4.0))  # the legacy format itself still loads
    raw = path.read_bytes()
    idx = raw.index(b"K\x04N")  # numel in the persistent id (then view_metadata None)
    _refused(tmp_path, raw[:idx] + _int(1 << 40) + raw[idx + 2:], "more than the whole file")


def test_lightning_and_numpy_content_still_loads(tmp_path):
    import argparse

    import numpy as np

    obj = {"state_dict": collections.OrderedDict(w=torch.ones(2, 3), p=torch.nn.Parameter(torch.zeros(3))),
           "hparams": argparse.Namespace(lr=1e-4), "metric": np.float32(1.5), "arr": np.arange(6).reshape(2, 3),
           "b": b"\x00\x01", "s": {1, 2}, "fs": frozenset({3}), "steps": [1, 2]}
    path = tmp_path / "ok.ckpt"
    torch.save(obj, path)
    got = load_checkpoint(path)
    assert torch.equal(got["state_dict"]["w"], torch.ones(2, 3)) and isinstance(got["state_dict"]["p"],
                                                                                 torch.nn.Parameter)
    assert got["metric"] == np.float32(1.5) and np.array_equal(got["arr"], np.arange(6).reshape(2, 3))
    assert got["b"] == b"\x00\x01" and got["s"] == {1, 2} and got["fs"] == frozenset({3})
    path2 = tmp_path / "ok2.ckpt"
    torch.save(obj, path2, pickle_protocol=2, _use_new_zipfile_serialization=False)
    got2 = load_checkpoint(path2)
    assert got2["b"] == b"\x00\x01" and torch.equal(got2["state_dict"]["w"], torch.ones(2, 3))
