"""model_type `vqvaeoptvq`: the user's single-level VqVae network with the OptVQ (Sinkhorn) quantizer.

The user's registry sent `vqvaeoptvq` to its VqVae2 class with use_optvq forced on: the VQGAN-style encoder/decoder
of the VqVae family around a VectorQuantizerSinkhorn (n_e = vocab_size, e_dim = n_init, beta = optvq_beta, l2 loss,
use_proj = optvq_use_proj), wrapped as `vq_vae.optvq_quantizer`. These tests hold vqforge to that."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from test_user_families import _strict_load_equals, user_vqvae_state_dict
from vqforge import ConfigError, build_model
from vqforge.cli import main
from vqforge.config import parse_config
from vqforge.config.schema import DalleVQVAEConfig, ModelConfig
from vqforge.quantizers.sinkhorn import SinkhornQuantizer

CHANNELS = (32, 32, 32, 32, 32, 64)


def user_optvq_vqvae_state_dict(use_proj: bool = True, latent: int = 8, k: int = 16) -> dict[str, torch.Tensor]:
    """The user's VqVae2(use_optvq=True) keys: the VqVae encoder/decoder and the adapter's `optvq_quantizer`
    (nn.Embedding(n_e, e_dim) and, with use_proj, nn.Linear(e_dim, e_dim)); the adapter's embedding proxy is a plain
    object and holds no tensors."""
    sd = {key: v for key, v in user_vqvae_state_dict(CHANNELS, latent=latent, k=k).items()
          if not key.startswith("vq_vae.")}
    sd["vq_vae.optvq_quantizer.embedding.weight"] = torch.randn(k, latent)
    if use_proj:
        sd["vq_vae.optvq_quantizer.proj.weight"] = torch.randn(latent, latent) * latent**-0.5
        sd["vq_vae.optvq_quantizer.proj.bias"] = torch.randn(latent)
    return sd


def optvq_vqvae_cfg(use_proj: bool = True, beta: float = 1.0) -> ModelConfig:
    return ModelConfig(family="dalle_vqvae", variant=None, dalle_vqvae=DalleVQVAEConfig(
        n_init=8, vocab_size=16, channels=list(CHANNELS), quantizer="optvq", optvq_beta=beta, optvq_use_proj=use_proj))


@pytest.mark.parametrize("use_proj", [True, False])
def test_vqvaeoptvq_loads_the_users_state_dict_strictly(use_proj):
    torch.manual_seed(0)
    fixture = user_optvq_vqvae_state_dict(use_proj=use_proj)
    model = build_model(optvq_vqvae_cfg(use_proj=use_proj))
    assert set(model.state_dict()) == set(fixture)
    _strict_load_equals(model, fixture)
    q = model.vq_vae.optvq_quantizer
    assert isinstance(q, SinkhornQuantizer)
    # the settings the user's class fixed
    assert (q.epsilon, q.n_iters, q.normalize_mode, q.use_prob, q.loss_q_type, q.beta) == (10.0, 5, "all", True,
                                                                                            "l2", 1.0)


def test_model_type_vqvaeoptvq_builds_the_vqvae_with_optvq():
    cfg = parse_config({"model_type": "vqvaeoptvq", "model_args": {
        "group_count": 5, "n_hid": 256, "vocab_size": 4096, "n_init": 64, "commitment_cost": 0.3, "decay": 0.95,
        "optvq_beta": 0.5, "optvq_use_proj": False, "optvq_use_sinkhorn": True, "optvq_num_head": 1}})
    c = cfg.model.dalle_vqvae
    assert cfg.model.family == "dalle_vqvae"
    assert (c.quantizer, c.vocab_size, c.n_init, c.optvq_beta, c.optvq_use_proj) == ("optvq", 4096, 64, 0.5, False)
    assert c.decay == DalleVQVAEConfig().decay  # no effect with OptVQ: not taken over
    # the plain VqVae keeps its EMA codebook; the optvq_* keys have no effect there
    plain = parse_config({"model_type": "VqVae", "model_args": {"vocab_size": 512, "optvq_beta": 0.5}})
    assert plain.model.dalle_vqvae.quantizer == "ema" and plain.model.dalle_vqvae.optvq_beta == 1.0
    # the hierarchical OptVQ family is still what the other OptVQ names build
    assert parse_config({"model_type": "vqvae2optvq"}).model.family == "vqvae2_optvq"


@pytest.mark.parametrize("key, value", [("optvq_use_sinkhorn", False), ("optvq_num_head", 2)])
def test_vqvaeoptvq_settings_vqforge_lacks_are_errors(key, value):
    with pytest.raises(ConfigError) as e:
        parse_config({"model_type": "vqvaeoptvq", "model_args": {key: value}})
    assert e.value.path == f"model_args.{key}"


def test_vqvaeoptvq_round_trip_and_gradients():
    torch.manual_seed(0)
    model = build_model(optvq_vqvae_cfg(beta=0.5))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model.train()(x)
    assert out.indices.shape == (2, 2, 2)
    (F.mse_loss(out.reconstruction, x) + out.codebook_loss).backward()
    assert model.encoder.model[0].weight.grad.abs().sum() > 0  # straight-through to the encoder
    q = model.vq_vae.optvq_quantizer
    assert q.embedding.weight.grad.abs().sum() > 0 and q.proj.weight.grad.abs().sum() > 0  # codebook by gradients
    model.eval()
    with torch.no_grad():
        idx = model.encode(x)
        assert torch.equal(idx, model.encode(x))  # eval assigns the nearest code: deterministic
        z = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8)
        assert torch.equal(idx.reshape(-1), torch.cdist(z, q.codebook).argmin(1))
        assert torch.equal(model.decode(idx), model(x).reconstruction)
        with pytest.raises(ValueError, match="out of range"):
            model.decode(torch.full((1, 2, 2), 16))


def test_vqvaeoptvq_loss_is_the_users_l2_loss():
    torch.manual_seed(0)
    model = build_model(optvq_vqvae_cfg(beta=0.5)).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    out = model(x)
    z = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8)
    e = model.vq_vae.optvq_quantizer.codebook[out.indices.reshape(-1)]
    # mse(x, sg[e]) + beta · mse(e, sg[x])
    assert torch.allclose(out.codebook_loss, F.mse_loss(z, e.detach()) + 0.5 * F.mse_loss(e, z.detach()))


def test_vqvaeoptvq_config_of_the_users_layout_checks_and_trains(tmp_path, capsys):
    raw = {"model_type": "vqvaeoptvq",
           "model_args": {"group_count": 2, "n_hid": 64, "n_blk_per_group": 1, "vocab_size": 16, "n_init": 8,
                          "input_channels": 3, "output_channels": 3, "commitment_cost": 0.25, "decay": 0.99,
                          "optvq_beta": 1.0, "optvq_use_proj": True},
           "train_args": {"num_steps": 2, "lr": 1e-4, "use_gan": False, "save_interval": 2,
                          "validation_interval": 2, "val_max_batches": 1},
           "data_args": {"batch_size": 2, "source": "sample_photos"}}
    path = tmp_path / "vqvaeoptvq.json"
    path.write_text(json.dumps(raw))
    assert main(["check-config", str(path)]) == 0
    printed = "".join(capsys.readouterr())
    assert "model_args.decay: has no effect" in printed and "model_args.commitment_cost: has no effect" in printed
    sets = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "loss.perceptual_weight=0",
            "--set", "data.resolution=32", "--set", "data.resize=40", "--set", "train.val_max_batches=1",
            "--set", "model.dalle_vqvae.channels=[32, 32, 64]"]  # the user's widths are fixed; keep it tiny
    assert main(["train", str(path), "--out", str(tmp_path / "run"), *sets]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
