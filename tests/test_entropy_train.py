"""`vqforge entropy train|eval` end to end on tokens of a tiny (randomly initialised, exported) tokenizer: the token
cache, metrics, the exported model the codec loads, exact resume, the previous system's transformer_config.json,
config errors, and a 2-process gloo run that matches one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_config

from vqforge.cli import main
from vqforge.config.parse import field_paths
from vqforge.entropy import load_entropy_model
from vqforge.entropy.config import EntropyConfig, load_entropy_config
from vqforge.errors import ConfigError


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """A random 2-level residual-VQ tokenizer (32 codes, 16x16 tokens at 32x32) and a few short clips."""
    from vqforge.data.synthetic_clips import clip_set, write_clips
    from vqforge.models.pretrained import save_pretrained
    from vqforge.models.registry import build

    root = tmp_path_factory.mktemp("entropy")
    cfg = tiny_config(model={"quantizer": {"rvq_levels": 2}})
    torch.manual_seed(0)
    save_pretrained(build(cfg.model), cfg, root / "tok")
    write_clips(root / "train", clip_set(["astronaut", "rocket"], frames=5, size=32)[:3])
    write_clips(root / "val", clip_set(["coffee"], frames=4, size=32)[:1])
    return root


def native(assets: Path, name: str = "masked_groups", **train) -> dict:
    model = {"name": name, "d_model": 16, "num_layers": 1, "nhead": 2}
    if name == "masked_groups":
        model["num_groups"] = 3
    return {"model": model, "tokenizer": {"path": str(assets / "tok"), "cache_dir": str(assets / "cache")},
            "data": {"train": [str(assets / "train")], "val": [str(assets / "val")], "sequence_length": 3},
            "train": {"batch_size": 2, "num_steps": 4, "save_interval": 2, "validation_interval": 2, "seed": 3,
                      **train},
            "log": {"every": 1, "tensorboard": False, "progress": False}}


def write(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d))
    return path


def val_lines(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]


def test_every_entropy_config_field_is_read_outside_the_config_module():
    import re

    src = REPO / "src" / "vqforge"
    code = "\n".join(p.read_text() for p in src.rglob("*.py") if p.name != "config.py" or p.parent.name != "entropy")
    for path in field_paths(EntropyConfig):
        name = path.rsplit(".", 1)[-1]
        assert re.search(rf"\.{re.escape(name)}\b", code), f"entropy config field {path} is never read"


def test_train_writes_a_model_the_codec_loads_and_reports_bits(assets, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["entropy", "train", str(write(tmp_path / "e.json", native(assets))), "--out", str(run)]) == 0
    model, meta = load_entropy_model(run)  # run_dir/model/
    assert model.name == "masked_groups"
    assert meta["layout"] == {"depth": 2, "height": 16, "width": 16, "vocab_size": 32}
    from vqforge.entropy.tokens import load_tokenizer
    from vqforge.entropy.config import EntropyTokenizerConfig

    assert meta["tokenizer_hash"] == load_tokenizer(EntropyTokenizerConfig(path=str(assets / "tok"))).hash
    vals = val_lines(run)
    assert [v["step"] for v in vals] == [2, 4]
    last = vals[-1]
    for k in ("bits_per_token", "bits_per_token_ratio", "bits_per_pixel", "bits_per_token_depth0",
              "bits_per_token_depth1", "bits_per_token_intra", "bits_per_token_inter", "decode_passes_per_frame"):
        assert k in last, k
    assert last["decode_passes_per_frame"] == 2 * 3
    assert last["bits_per_token_ratio"] == pytest.approx(last["bits_per_token"] / 5)
    # 2 x 16 x 16 tokens per 32 x 32 frame
    assert last["bits_per_pixel"] == pytest.approx(last["bits_per_token"] * 512 / 1024)
    assert last["bits_per_token"] == pytest.approx((last["bits_per_token_depth0"] + last["bits_per_token_depth1"]) / 2)
    # the coder's rate on the whole validation clip is what `compress` really writes for it
    from safetensors.torch import load_file

    from vqforge.codec import compress_tokens

    (shard,) = (assets / "cache").glob("*/val/00000.safetensors")
    clip = load_file(shard)["tokens"].long()
    real = compress_tokens(clip, model, bytes(32), 32, intra_period=32)
    assert last["coded_bits_per_token"] == pytest.approx(real.estimate_bits / clip.numel(), rel=1e-4)
    assert 8 * real.payload_bytes / clip.numel() == pytest.approx(last["coded_bits_per_token"], rel=0.02)
    assert last["coded_bits_per_token_ratio"] == pytest.approx(last["coded_bits_per_token"] / 5)
    assert last["coded_bits_per_token"] == pytest.approx(
        (last["coded_bits_per_token_depth0"] + last["coded_bits_per_token_depth1"]) / 2)
    assert (run / "checkpoints" / "step_00000004" / "training_state.json").is_file()
    # eval reproduces the last validation exactly (same windows, same model)
    capsys.readouterr()
    assert main(["entropy", "eval", str(run), "--data", str(assets / "val"), "--time-frames", "1",
                 "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["bits_per_token"] == pytest.approx(last["bits_per_token"], rel=1e-9)
    assert m["coded_bits_per_token"] == pytest.approx(last["coded_bits_per_token"], rel=1e-9)
    capsys.readouterr()
    assert main(["entropy", "eval", str(run), "--data", str(assets / "val"), "--intra-period", "-1"]) == 2
    assert "--intra-period" in capsys.readouterr().err
    assert m["decode_seconds_per_frame"] > 0


def test_token_cache_is_reused_and_recomputed_when_the_tokenizer_changes(assets, tmp_path):
    from vqforge.entropy.config import EntropyTokenizerConfig
    from vqforge.entropy.tokens import cached_tokens, load_tokenizer
    from vqforge.models.pretrained import load_safetensors, save_safetensors

    logs: list[str] = []
    tok = load_tokenizer(EntropyTokenizerConfig(path=str(assets / "tok")))
    a = cached_tokens(tok, [str(assets / "val")], "data.val", tmp_path, "val", logs.append)
    b = cached_tokens(tok, [str(assets / "val")], "data.val", tmp_path, "val", logs.append)
    assert logs[0].startswith("tokenizing") and "reusing" in logs[1]
    assert all(torch.equal(x, y) for x, y in zip(a.clips, b.clips))
    assert a.clips[0].shape == (4, 2, 16, 16)
    # other weights: another hash, so a fresh tokenization instead of stale tokens
    other = tmp_path / "tok2"
    import shutil

    shutil.copytree(assets / "tok", other)
    w = load_safetensors(other / "model.safetensors")
    key = next(k for k in w if "encoder" in k and w[k].dtype.is_floating_point)
    w[key] = w[key] + 1.0
    save_safetensors(w, other / "model.safetensors")
    tok2 = load_tokenizer(EntropyTokenizerConfig(path=str(other)))
    assert tok2.hash != tok.hash
    cached_tokens(tok2, [str(assets / "val")], "data.val", tmp_path, "val", logs.append)
    assert logs[2].startswith("tokenizing") and tok2.hash[:16] in logs[2]
    # a changed input file invalidates the cache too
    f = next((assets / "val").iterdir())
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    cached_tokens(tok, [str(assets / "val")], "data.val", tmp_path, "val", logs.append)
    assert logs[3].startswith("tokenizing")


@pytest.mark.parametrize("name", ["masked_groups", "transformer_ar"])
def test_resume_equals_a_straight_run_bitwise(assets, tmp_path, name):
    cfg = write(tmp_path / "e.json", native(assets, name, validation_interval=4))
    assert main(["entropy", "train", str(cfg), "--out", str(tmp_path / "straight")]) == 0
    ckpts = tmp_path / "straight" / "checkpoints"
    assert main(["entropy", "train", str(cfg), "--out", str(tmp_path / "resumed"),
                 "--resume", str(ckpts / "step_00000002")]) == 0
    a = load_file(str(ckpts / "step_00000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and training did change the weights
    c = load_file(str(ckpts / "step_00000002" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # refusing to train over a run
    assert main(["entropy", "train", str(cfg), "--out", str(tmp_path / "straight")]) == 2


def user_layout(assets: Path, **model) -> dict:
    return {
        "model": {"vocab_size": 32, "d_model": 24, "num_layers": 1, "nhead": 3, "max_seq_len": 1100,
                  "dropout": 0.1, "ff_hidden_dim": 40, **model},
        "data": {"seq_len": 1024, "sequence_length": 2, "image_size": 32, "train_data_dir": str(assets / "train"),
                 "val_data_dir": str(assets / "val"), "train_num_samples": 3, "val_num_samples": None},
        "vqgan": {"vq_config": "", "vq_ckpt": str(assets / "tok")},
        "training": {"batch_size": 1, "grad_accum_steps": 2, "use_amp": False, "epochs": 1, "lr": 0.0001,
                     "weight_decay": 0.0001, "seed": 42, "resume": None, "val_start_epoch": 1},
        "output": {"output_dir": "./runs/transformer", "recon_output_dir": "/root/recon", "original_output_dir": ""},
        "device": "cuda:0",
    }


def test_previous_systems_transformer_config_trains_with_its_keys_in_effect(assets, tmp_path, capsys):
    path = write(tmp_path / "transformer_config.json", user_layout(assets))
    cfg, warns, later = load_entropy_config(path)
    assert cfg.model.name == "transformer_ar" and cfg.tokenizer.weights == str(assets / "tok")
    assert cfg.train.epochs == 1 and cfg.train.grad_accum_steps == 2 and cfg.data.sequence_length == 2
    assert any("data.seq_len has no effect" in w for w in warns)
    assert any("recon_output_dir has no effect" in w for w in warns)
    run = tmp_path / "run"
    assert main(["entropy", "train", str(path), "--out", str(run), "--set", "log.progress=false",
                 "--set", "log.tensorboard=false"]) == 0
    err = capsys.readouterr().err
    assert "CUDA is not available; training on the CPU" in err or torch.cuda.is_available()
    model, meta = load_entropy_model(run)
    # the keys the previous system never read now build the model
    assert meta["config"] == {"vocab_size": 32, "d_model": 24, "num_layers": 1, "nhead": 3, "max_seq_len": 1100,
                              "dropout": 0.1, "ff_hidden_dim": 40, "rope_base": 10000.0}
    assert model.blocks[0].ff.up.out_features == 40 and model.blocks[0].attn.nhead == 3
    assert model.blocks[0].drop.p == 0.1
    # 3 windows, 1 x 2 accumulation: one epoch is 2 steps, validated from epoch 1 on
    assert [v["step"] for v in val_lines(run)] == [2]


def test_previous_systems_config_errors_name_both_values_and_the_fix(assets, tmp_path):
    path = write(tmp_path / "t.json", user_layout(assets, vocab_size=1024))
    with pytest.raises(ConfigError, match=r"model.vocab_size: is 1024, but the tokenizer has 32 codes"):
        from vqforge.entropy.trainer import EntropyTrainer

        cfg, warns, later = load_entropy_config(path)
        EntropyTrainer(cfg, tmp_path / "run", warnings=warns, later=later)
    assert main(["entropy", "train", str(path), "--out", str(tmp_path / "r")]) == 2
    path = write(tmp_path / "t2.json", user_layout(assets, max_seq_len=600))
    with pytest.raises(ConfigError, match="max_seq_len >= 1024"):
        cfg, warns, later = load_entropy_config(path)
        EntropyTrainer(cfg, tmp_path / "run2", warnings=warns, later=later)
    bad = user_layout(assets)
    bad["training"]["weigth_decay"] = 1e-3
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        load_entropy_config(write(tmp_path / "t3.json", bad))
    with pytest.raises(ConfigError, match="nhead"):
        load_entropy_config(write(tmp_path / "t4.json", user_layout(assets, nhead=5)))


def test_validation_coded_setting_reaches_validation(assets, tmp_path):
    run = tmp_path / "run"
    cfg = native(assets, num_steps=2, validation_coded=False)
    assert main(["entropy", "train", str(write(tmp_path / "e.json", cfg)), "--out", str(run)]) == 0
    (last,) = val_lines(run)
    assert "bits_per_token" in last and not any(k.startswith("coded_") for k in last)
    d = native(assets, validation_intra_period=0)
    with pytest.raises(ConfigError, match="validation_intra_period"):
        load_entropy_config(write(tmp_path / "bad.json", d))


def test_native_config_errors(assets, tmp_path):
    d = native(assets)
    d["model"]["name"] = "transformer"
    with pytest.raises(ConfigError, match="model.name"):
        load_entropy_config(write(tmp_path / "a.json", d))
    d = native(assets)
    d["train"]["epochs"] = 2
    with pytest.raises(ConfigError, match="both num_steps and epochs"):
        load_entropy_config(write(tmp_path / "b.json", d))
    d = native(assets)
    del d["tokenizer"]["path"]
    with pytest.raises(ConfigError, match="names no tokenizer"):
        load_entropy_config(write(tmp_path / "c.json", d))
    d = native(assets)
    d["model"]["max_seq_len"] = 100
    _, warns, _ = load_entropy_config(write(tmp_path / "d.json", d))
    assert any("max_seq_len have no effect with model.name masked_groups" in w for w in warns)


def _torchrun(args: list[str], cwd: Path, nproc: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    return p.returncode, p.stdout


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(assets, tmp_path):
    # transformer_ar's loss is deterministic given the windows, so the runs must agree to float tolerance
    two = native(assets, "transformer_ar", batch_size=1, num_steps=3, save_interval=3, validation_interval=3)
    one = native(assets, "transformer_ar", batch_size=2, num_steps=3, save_interval=3, validation_interval=3)
    rc, out = _torchrun(["-m", "vqforge", "entropy", "train", str(write(tmp_path / "two.json", two)),
                         "--out", str(tmp_path / "two")], tmp_path, 2)
    assert rc == 0, out[-3000:]
    assert "2 process(es)" in (tmp_path / "two" / "train.log").read_text()
    assert main(["entropy", "train", str(write(tmp_path / "one.json", one)), "--out", str(tmp_path / "one")]) == 0
    a = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    init = {k: v for k, v in load_entropy_model(tmp_path / "one")[0].state_dict().items()}
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    va, vb = val_lines(tmp_path / "two")[-1], val_lines(tmp_path / "one")[-1]
    assert va["bits_per_token"] == pytest.approx(vb["bits_per_token"], rel=1e-5)
    assert va["frames"] == vb["frames"]  # validation windows split over ranks, sums all-reduced
    assert init  # loaded
