"""The patch family (models/patch.py): linear patch transforms at init, its config section, and the whole path from
a native config through training, export and from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from vqforge import ConfigError, build_model, from_pretrained
from vqforge.cli import main
from vqforge.config import parse_config
from vqforge.config.effects import ineffective
from vqforge.config.schema import ModelConfig, PatchConfig, QuantizerConfig
from vqforge.models.patch import GatedBlock, PatchTokenizer
from vqforge.tokens.io import architecture_hash


def patch_cfg(**patch) -> ModelConfig:
    return ModelConfig(family="patch", variant="EMAVQ", n_embed=16, embed_dim=8,
                       patch=PatchConfig(**{"factor": 4, "channels": 32, "num_blocks": 2, **patch}),
                       quantizer=QuantizerConfig(rvq_levels=3))


def test_untrained_network_is_a_linear_patch_transform():
    """Gates start at 0: encoder and decoder are affine maps, and each token sees only its own f x f patch."""
    torch.manual_seed(0)
    model = build_model(patch_cfg()).eval()
    assert isinstance(model, PatchTokenizer)
    gates = [m.gate for m in model.modules() if isinstance(m, GatedBlock)]
    assert len(gates) == 4 and all(g.item() == 0 for g in gates)
    a, b = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        enc = model.encode_to_latent
        zero = enc(torch.zeros_like(a))
        torch.testing.assert_close(enc(a + b) - zero, (enc(a) - zero) + (enc(b) - zero), atol=1e-5, rtol=1e-5)
        # changing one pixel changes only the token of its 4x4 patch
        c = a.clone()
        c[:, :, 5, 9] += 1.0
        changed = (enc(c) - enc(a)).abs().amax(dim=1) > 0
        assert changed.sum(dim=(1, 2)).tolist() == [1, 1] and changed[:, 1, 2].all()
        dec = model.decode_latent
        q = torch.randn(2, 8, 4, 4)
        torch.testing.assert_close(dec(2 * q) - dec(torch.zeros_like(q)), 2 * (dec(q) - dec(torch.zeros_like(q))),
                                   atol=1e-5, rtol=1e-5)
    # once a gate opens, the network is no longer affine
    with torch.no_grad():
        for g in gates:
            g.fill_(0.5)
        assert not torch.allclose(enc(a + b) - zero, (enc(a) - zero) + (enc(b) - zero), atol=1e-3)


def test_gates_learn_from_the_first_step():
    torch.manual_seed(0)
    model = build_model(patch_cfg()).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(x)
    (F.l1_loss(out.reconstruction, x) + out.codebook_loss).backward()
    gates = [m.gate for m in model.modules() if isinstance(m, GatedBlock)]
    assert all(g.grad is not None and g.grad.abs().item() > 0 for g in gates)


def test_shapes_follow_factor_and_depth():
    torch.manual_seed(0)
    model = build_model(patch_cfg(factor=2, num_blocks=0)).eval()
    assert model.downsample_factor == 2
    x = torch.rand(1, 3, 12, 20) * 2 - 1
    with torch.no_grad():
        idx = model.encode(x)
        assert idx.shape == (1, 3, 6, 10)
        assert model.decode(idx[:, :1]).shape == x.shape  # a depth prefix decodes too
    assert not [m for m in model.modules() if isinstance(m, GatedBlock)]


@pytest.mark.parametrize("key,value,fragment", [
    ("channels", 48, "multiple of 32"),
    ("factor", 0, "must be >= 1"),
    ("num_blocks", -1, "must be >= 0"),
    ("out_channels", 0, "must be >= 1"),
])
def test_bad_patch_settings_are_config_errors(key, value, fragment):
    raw = {"model": {"family": "patch", "variant": "EMAVQ", "patch": {key: value}}, "data": {"resolution": 64}}
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert f"model.patch.{key}" in str(e.value) and fragment in str(e.value)


def test_resolution_must_be_divisible_by_the_factor():
    with pytest.raises(ConfigError, match="data.resolution.*divisible"):
        parse_config({"model": {"family": "patch", "patch": {"factor": 8}}, "data": {"resolution": 60}})


def test_ddconfig_has_no_effect_in_the_patch_family_and_patch_none_elsewhere():
    cfg = parse_config({"model": {"family": "patch", "ddconfig": {"ch": 64}}})
    assert "model.ddconfig.ch" in dict(ineffective(cfg))
    cfg = parse_config({"model": {"family": "taming", "patch": {"channels": 64}}})
    assert "model.patch.channels" in dict(ineffective(cfg))


def test_index_files_of_different_patch_networks_do_not_mix():
    a = parse_config({"model": {"family": "patch"}})
    b = parse_config({"model": {"family": "patch", "patch": {"factor": 8}}})
    c = parse_config({"model": {"family": "patch", "patch": {"factor": 8}}})
    assert architecture_hash(a) != architecture_hash(b) and architecture_hash(b) == architecture_hash(c)


def test_train_export_and_from_pretrained(tmp_path):
    """A native patch config trains with the CLI, exports, and loads back with strict keys to the same outputs."""
    from PIL import Image

    data = tmp_path / "imgs"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        arr = (torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(data / f"{i}.png")
    cfg = {
        "model": {"family": "patch", "variant": "EMAVQ", "n_embed": 16, "embed_dim": 8,
                  "patch": {"factor": 4, "channels": 32, "num_blocks": 1},
                  "quantizer": {"rvq_levels": 2, "kmeans_init": True, "restart_unused_steps": 5}},
        "loss": {"use_gan": False, "perceptual_weight": 0.0},
        "data": {"train": [str(data)], "val": [str(data)], "resolution": 16, "batch_size": 2},
        "train": {"num_steps": 6, "save_interval": 6, "validation_interval": 6, "lr": 1e-3},
        "log": {"every": 3, "progress": False, "tensorboard": False},
    }
    cfg_path = tmp_path / "patch.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run)]) == 0
    model = from_pretrained(run / "model").eval()
    assert isinstance(model, PatchTokenizer) and model.config.patch.num_blocks == 1
    assert json.loads((run / "model" / "config.json").read_text())["config"]["model"]["family"] == "patch"
    gates = [m.gate.item() for m in model.modules() if isinstance(m, GatedBlock)]
    assert any(g != 0 for g in gates)  # training moved the gates
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        idx = model.encode(x)
        assert idx.shape == (1, 2, 4, 4)
        torch.testing.assert_close(model.decode(idx), model(x).reconstruction)
    # the previous system has no such network: its export format refuses it with a fix
    assert main(["export", str(run), "--out", str(tmp_path / "user"), "--format", "user"]) == 2


def test_channel_settings_reach_the_network():
    torch.manual_seed(0)
    wide = build_model(patch_cfg(channels=64))
    assert wide.encoder.conv_in.out_channels == 64 and wide.decoder.conv_out.in_channels == 64
    assert wide.quant_conv.in_channels == 64 and wide.post_quant_conv.out_channels == 64
    grey = build_model(patch_cfg(in_channels=1, out_channels=2)).eval()
    with torch.no_grad():
        y = grey(torch.rand(2, 1, 8, 8) * 2 - 1).reconstruction
    assert y.shape == (2, 2, 8, 8)
    assert grey.encoder.conv_in.in_channels == 1 * 4 * 4
