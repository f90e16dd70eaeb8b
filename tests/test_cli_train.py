"""End to end through the command line: train, resume, export, and the user's seed and taming configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import vqforge
from vqforge.cli import main

from conftest import REPO, tiny_dict

TINY_SETS = [
    "data.source=sample_photos", "data.train=[]", "data.val=[]", "data.resolution=32", "data.resize=40",
    "data.batch_size=2", "data.num_workers=0", "train.num_steps=3", "train.save_interval=3",
    "train.validation_interval=3", "train.val_max_batches=1", "log.every=1", "log.progress=false",
    "log.tensorboard=false", "loss.perceptual_weight=0", "model.ddconfig.ch=32", "model.ddconfig.ch_mult=[1,2]",
    "model.ddconfig.attn_resolutions=[]", "model.ddconfig.resolution=32", "model.n_embed=32", "model.embed_dim=8",
    "model.ddconfig.z_channels=8",
]


def _sets(*items: str) -> list[str]:
    out = []
    for item in (*TINY_SETS, *items):
        out += ["--set", item]
    return out


def test_train_resume_export_from_the_command_line(tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    d = tiny_dict(train={"num_steps": 4, "save_interval": 2, "validation_interval": 2}, log={"tensorboard": True})
    cfg_path.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "run directory" in err and str(run / "model") in err
    for rel in ("config.yaml", "train.log", "metrics.jsonl", "checkpoints/latest", "model/config.json",
                "model/model.safetensors"):
        assert (run / rel).exists(), rel
    assert list((run / "images").glob("val_reconstruction_*.png"))
    # log.image_every null: a training-batch grid at every validation step, as the config documents
    assert sorted(p.name for p in (run / "images").glob("train_reconstruction_*.png")) == [
        "train_reconstruction_00000002.png", "train_reconstruction_00000004.png"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # the saved resolved config is itself a loadable native config
    assert vqforge.load_config(run / "config.yaml").model == vqforge.load_config(cfg_path).model

    # resume with a larger step count continues at step 4
    assert main(["train", str(cfg_path), "--out", str(run), "--resume", str(run), "--set", "train.num_steps=6"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "at step 4" in err
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]

    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    model = vqforge.from_pretrained(out)
    import torch

    from safetensors.torch import load_file

    # the exported weights are the final checkpoint's, tensor for tensor
    exported = load_file(str(out / "model.safetensors"))
    final = load_file(str(run / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert exported.keys() == final.keys()
    differ = [k for k in final if not torch.equal(exported[k], final[k])]
    assert not differ, f"exported tensors differ from the final checkpoint: {differ[:5]}"
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], final[k]) for k in final)
    # and the loaded model round-trips: decoding its own codes is its forward reconstruction
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.decode(model.encode(x)), model(x).reconstruction, rtol=0, atol=0)


def test_resume_with_an_other_model_fails_cleanly(tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_dict(train={"num_steps": 2, "save_interval": 2})))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run")]) == 0
    code = main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--resume", str(tmp_path / "run"),
                 "--set", "model.n_embed=64"])
    assert code == 2
    err = capsys.readouterr().err
    assert "different model configuration" in err and "Traceback" not in err


def test_the_users_seed_config_trains(tmp_path, capsys):
    """The user's seed-format JSON (comments, trailing commas, `vaild`) with model_type corrected trains as is,
    shrunk with --set to run in seconds."""
    seed = REPO / "configs" / "examples" / "seed_taming_emavq.json"
    run = tmp_path / "seed_run"
    assert main(["train", str(seed), "--out", str(run), *_sets("loss.disc_start=1")]) == 0
    log = (run / "train.log").read_text()
    assert "use_gan: true" in log and "every 3 step(s)" in log  # the seed format's discriminator cadence
    assert (run / "checkpoints" / "step_00000003" / "discriminator.safetensors").exists()


def test_the_users_mismatched_seed_config_is_refused(tmp_path, capsys):
    text = (REPO / "configs" / "examples" / "seed_taming_emavq.json").read_text()
    bad = tmp_path / "taming.json"
    bad.write_text(text.replace('"model_type": "TamingVQGAN"', '"model_type": "vqvae2"'))
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "EMAVQ" in err and "TamingVQGAN" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_taming_yaml_trains(tmp_path):
    taming = REPO / "configs" / "examples" / "taming_vqgan.yaml"
    run = tmp_path / "taming_run"
    assert main(["train", str(taming), "--out", str(run), *_sets()]) == 0
    assert (run / "model" / "model.safetensors").exists()


def test_missing_vgg_weights_stop_before_step_zero(tmp_path, monkeypatch, capsys):
    import vqforge.losses.vgg as vgg

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("VQFORGE_VGG16", raising=False)

    def offline(url, dst):
        raise OSError("network unreachable")

    monkeypatch.setattr(vgg, "download_file", offline)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_dict(loss={"perceptual_weight": 1.0})))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "perceptual_weight" in err and "vgg16-397923af.pth" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_into_an_existing_run_needs_resume(tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_dict(train={"num_steps": 1, "save_interval": 1})))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run")]) == 0
    before = (tmp_path / "run" / "checkpoints" / "step_00000001" / "model.safetensors").read_bytes()
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "step_00000001" / "model.safetensors").read_bytes() == before
