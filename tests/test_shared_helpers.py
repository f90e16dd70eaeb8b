"""The helpers training, evaluation and the commands share (vqforge.utils, vqforge.images, run-dir resolution,
the model's downsampling check): one implementation each, tested once here."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from vqforge.config.schema import ModelConfig, VQVAE2Config
from vqforge.errors import CheckpointError, ConfigError
from vqforge.images import from_uint8, to_uint8
from vqforge.models.pretrained import latest_checkpoint, resolve_model_dir
from vqforge.utils import is_better, resolve_device, unwrap_model

from conftest import tiny_config


# ------------------------------------------------------------------------------------------------------- utils
def test_resolve_device_names_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError) as e:
            resolve_device("cuda:1", "--device")
        assert e.value.path == "--device" and "CUDA is not available" in str(e.value)
        with pytest.raises(ConfigError) as e:
            resolve_device("cuda")  # the training setting by default
        assert e.value.path == "train.device"
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0", "--device")


def test_unwrap_model_sees_through_wrappers():
    inner = nn.Linear(2, 2)
    assert unwrap_model(inner) is inner and unwrap_model(None) is None
    assert unwrap_model(nn.DataParallel(inner)) is inner

    class Compiled(nn.Module):  # what torch.compile returns keeps the module as `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    assert unwrap_model(nn.DataParallel(Compiled(inner))) is inner


def test_is_better_follows_the_metric_direction():
    assert is_better("psnr", 30.0, 29.0) and not is_better("psnr", 28.0, 29.0)
    assert is_better("lpips", 0.1, 0.2) and not is_better("rfid", 5.0, 4.0)
    assert is_better("lpips", 9.0, None) and is_better("psnr", 1.0, math.nan)


# ------------------------------------------------------------------------------------------------------ images
def test_uint8_mapping_round_trips_every_value():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = from_uint8(u)
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(to_uint8(x), u)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]  # clamped; 127.5 rounds to even


def test_model_input_and_frames_use_the_same_mapping():
    from vqforge.data.transforms import to_model_input, to_uint8_frames

    b = torch.randint(0, 256, (2, 3, 4, 4, 3), dtype=torch.uint8)  # (B, D, H, W, C)
    x = to_model_input(b)
    assert torch.equal(x, from_uint8(b.flatten(0, 1).permute(0, 3, 1, 2)))
    assert torch.equal(to_uint8_frames(x, 3), b)


# ------------------------------------------------------------------------------------------ run-dir resolution
def _ckpt(d, config=True, state=True):
    d.mkdir(parents=True)
    if config:
        (d / "config.json").write_text("{}")
    if state:
        (d / "training_state.json").write_text("{}")
    return d


def test_latest_checkpoint_pointer_absolute_and_fallback(tmp_path):
    run = tmp_path / "run"
    a, b = _ckpt(run / "checkpoints" / "step_00000002"), _ckpt(run / "checkpoints" / "step_00000010")
    _ckpt(run / "checkpoints" / "step_00000011", config=False)  # incomplete: no config.json
    assert latest_checkpoint(run) == b  # no `latest`: the highest complete step
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    assert latest_checkpoint(run) == a
    (run / "checkpoints" / "latest").write_text(str(b) + "\n")  # an absolute pointer
    assert latest_checkpoint(run) == b and resolve_model_dir(run) == b
    assert latest_checkpoint(tmp_path / "empty") is None


def test_resume_resolution_shares_the_run_dir_rules(tmp_path):
    from vqforge.train.checkpoint import resolve_checkpoint

    run = tmp_path / "run"
    _ckpt(run / "checkpoints" / "step_00000001")
    newest = _ckpt(run / "checkpoints" / "step_00000005")
    assert resolve_checkpoint(run) == newest  # without `latest`: the highest step, as export/eval resolve it
    (run / "checkpoints" / "latest").write_text("step_00000001\n")
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_00000001"
    with pytest.raises(CheckpointError, match="training_state.json"):
        resolve_checkpoint(_ckpt(tmp_path / "export", state=False))


# ------------------------------------------------------------------------------------------ downsampling check
def test_one_downsampling_check_for_config_and_command_line():
    cfg = tiny_config()
    assert cfg.model.downsample_factor == 2 and cfg.model.in_channels == 3
    cfg.model.check_resolution(34, "--resolution")
    with pytest.raises(ConfigError) as e:
        cfg.model.check_resolution(33, "--resolution")
    assert e.value.path == "--resolution" and "downsampling factor (2)" in str(e.value) and "32" in e.value.fix
    m = ModelConfig(family="vqvae2", variant=None, vqvae2=VQVAE2Config(nb_levels=2, scaling_rates=[4, 2]))
    assert m.downsample_factor == m.arch.total_downsample == 8
    with pytest.raises(ConfigError, match="product of scaling_rates"):
        m.check_resolution(36, "data.resolution")
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resolution=33))
    with pytest.raises(ConfigError) as e:
        bad.check()
    assert e.value.path == "data.resolution"


def test_vqvae2_model_checks_its_architecture_with_the_config_check():
    from vqforge.models.vqvae2 import VQVAE2

    m = ModelConfig(family="vqvae2", variant=None, vqvae2=VQVAE2Config(nb_levels=2, scaling_rates=[4, 2, 2]))
    with pytest.raises(ConfigError) as e:
        VQVAE2(m)
    assert e.value.path == "model.vqvae2.scaling_rates"
    m = ModelConfig(family="vqvae2", variant=None, vqvae2=VQVAE2Config(nb_levels=1, scaling_rates=[3]))
    with pytest.raises(ConfigError, match="powers of two"):
        VQVAE2(m)


# ------------------------------------------------------------------------------------------------ config walking
def test_dotted_keys_into_a_non_mapping_are_refused_by_mapping_and_set(tmp_path):
    import yaml

    from vqforge.config import load_config
    from vqforge.config.mapping import container_for

    from conftest import tiny_dict

    root = {"model": {"n_embed": 4}}
    container_for(root, "model.quantizer.type")["type"] = "vq"
    assert root == {"model": {"n_embed": 4, "quantizer": {"type": "vq"}}}
    with pytest.raises(ConfigError) as e:
        container_for(root, "model.n_embed.x", lambda here: f"<{here}>")
    assert e.value.path == "<model.n_embed>" and "expected a mapping" in str(e.value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_dict()))
    assert load_config(path, ["model.ddconfig.ch=64"]).model.ddconfig.ch == 64
    d = tiny_dict()
    d["model"]["ddconfig"] = 5
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as e:
        load_config(path, ["model.ddconfig.ch=64"])
    assert "model.ddconfig" in e.value.path and "expected a mapping" in str(e.value)
