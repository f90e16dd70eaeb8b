"""Every registered model family × variant × quantizer setting: shapes, gradients, eval round trip, key names."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from vqforge import ConfigError, build_model
from vqforge.config.schema import (DalleVQVAEConfig, DDConfig, ModelConfig, PatchConfig, QuantizerConfig, VQVAE2Config,
                                   VQVAE2OptVQConfig)
from vqforge.models import registry


RES = 8


def taming(variant: str, **quantizer) -> Callable[[], ModelConfig]:
    def make() -> ModelConfig:
        dd = DDConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], z_channels=8, resolution=RES)
        return ModelConfig(family="taming", variant=variant, n_embed=16, embed_dim=8, ddconfig=dd,
                           quantizer=QuantizerConfig(**quantizer))

    return make


def patch(variant: str, **quantizer) -> Callable[[], ModelConfig]:
    def make() -> ModelConfig:
        return ModelConfig(family="patch", variant=variant, n_embed=16, embed_dim=8,
                           patch=PatchConfig(factor=2, channels=32, num_blocks=1), quantizer=QuantizerConfig(**quantizer))

    return make


def vqvae2() -> ModelConfig:
    return ModelConfig(family="vqvae2", variant=None, vqvae2=VQVAE2Config(
        hidden_channels=16, res_channels=8, nb_res_layers=1, nb_levels=2, embed_dim=8, nb_entries=16,
        scaling_rates=[2, 2]))


def vqvae2_optvq(**kw) -> Callable[[], ModelConfig]:
    def make() -> ModelConfig:
        return ModelConfig(family="vqvae2_optvq", variant=None, vqvae2_optvq=VQVAE2OptVQConfig(
            hidden_channels=16, res_channels=8, nb_res_layers=1, nb_levels=2, embed_dim=8, nb_entries=16,
            scaling_rates=[2, 2], **kw))

    return make


def dalle(decay: float) -> Callable[[], ModelConfig]:
    def make() -> ModelConfig:
        return ModelConfig(family="dalle_vqvae", variant=None, dalle_vqvae=DalleVQVAEConfig(
            n_init=8, vocab_size=16, decay=decay, channels=[32, 32, 64]))

    return make


# family -> {case id: (config factory, uses EMA codebooks, every parameter gets a non-zero gradient)}
# (VQ-VAE-2's ReZero residual blocks start with alpha = 0, so their inner weights get exactly zero gradients)
CASES: dict[str, dict[str, tuple[Callable[[], ModelConfig], bool, bool]]] = {
    "taming": {
        "VQModel": (taming("VQModel"), False, True),
        "EMAVQ": (taming("EMAVQ"), True, True),
        "GumbelVQ": (taming("GumbelVQ"), False, True),
        "residual_VQ_per_level": (taming("VQModel", rvq_levels=3), False, True),
        "residual_VQ_shared": (taming("VQModel", rvq_levels=3, shared_codebook=True), False, True),
        "residual_EMA": (taming("EMAVQ", rvq_levels=2), True, True),
        "residual_EMA_prefix": (taming("EMAVQ", rvq_levels=3, shared_codebook=True, rvq_loss="prefix"), True, True),
        "residual_EMA_prefix_dropout": (taming("EMAVQ", rvq_levels=3, shared_codebook=True, rvq_loss="prefix",
                                               quantize_dropout=1.0), True, True),
        "PQEMAVQ": (taming("PQEMAVQ", num_subspaces=2), True, True),
    },
    # the patch family's gated blocks start with gate 0, so their inner weights get exactly zero gradients
    "patch": {"VQModel": (patch("VQModel"), False, False), "residual_EMA": (patch("EMAVQ", rvq_levels=3), True, False),
              "GumbelVQ": (patch("GumbelVQ"), False, False), "PQEMAVQ": (patch("PQEMAVQ", num_subspaces=2), True, False),
              "fsq": (patch("VQModel", type="fsq", fsq_levels=[4, 4]), False, False)},
    "vqvae2": {"default": (vqvae2, True, False)},
    "vqvae2_optvq": {"ce": (vqvae2_optvq(), False, False),
                     "l2_argmax": (vqvae2_optvq(loss_q_type="l2", use_prob=False, use_proj=False), False, False)},
    # the attention blocks' proj_out is frozen (the user's attention never applies it)
    "dalle_vqvae": {"ema": (dalle(0.99), False, True), "gradient_codebook": (dalle(0.0), False, True)},
}
PARAMS = [pytest.param(fam, case, id=f"{fam}-{case}") for fam in registry.registered() for case in CASES.get(fam, {})]


def make_model(family: str, case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CASES[family][case][0]())


def test_every_registered_family_has_cases():
    assert set(registry.registered()) <= set(CASES), "add test cases for the new model family"
    assert "taming" in registry.registered()


@pytest.mark.parametrize("family,case", PARAMS)
def test_forward_shapes_gradients_and_no_nans(family, case):
    model = make_model(family, case).train()
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert torch.isfinite(out.reconstruction).all() and torch.isfinite(out.codebook_loss)
    assert out.codebook_loss.ndim == 0
    for idx in out.indices if isinstance(out.indices, list) else [out.indices]:
        assert idx.dtype == torch.int64 and idx.shape[0] == 2
    for v in out.stats.values():
        assert not v.requires_grad and torch.isfinite(v).all()

    (F.l1_loss(out.reconstruction, x) + out.codebook_loss).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    if CASES[family][case][2]:
        zero = [n for n, p in trainable if p.grad.abs().sum() == 0]
        assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert model.last_layer.grad is not None and model.last_layer.grad.abs().sum() > 0


@pytest.mark.parametrize("family,case", PARAMS)
def test_eval_decode_of_encode_equals_forward(family, case):
    model = make_model(family, case)
    model(torch.rand(2, 3, RES, RES) * 2 - 1)  # one training forward (EMA codebooks move)
    model.eval()
    model.set_step(3)
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    with torch.no_grad():
        out = model(x)
        indices = model.encode(x)
        assert torch.allclose(model.decode(indices), out.reconstruction, atol=1e-5)
        assert torch.allclose(model(x).reconstruction, out.reconstruction)  # deterministic in eval mode


@pytest.mark.parametrize("family,case", PARAMS)
def test_ema_codebooks_are_not_trainable(family, case):
    model = make_model(family, case)
    ema_modules = [(n, m) for n, m in model.named_modules() if hasattr(m, "cluster_size") and hasattr(m, "embed_avg")]
    assert bool(ema_modules) == CASES[family][case][1]
    for name, mod in ema_modules:
        for pname, p in mod.named_parameters():
            assert not p.requires_grad, f"{name}.{pname} is an EMA codebook tensor but requires grad"
    frozen = {id(p) for _, m in ema_modules for p in m.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(id(p) in frozen for p in trainable)


@pytest.mark.parametrize("family,case", PARAMS)
def test_model_interface(family, case):
    model = make_model(family, case)
    assert model.config == CASES[family][case][0]()
    assert isinstance(model.last_layer, torch.nn.Parameter)
    model.set_step(0)


QUANTIZE_KEYS = {
    "VQModel": {"quantize.embedding.weight"},
    "EMAVQ": {"quantize.embedding.weight", "quantize.embedding.cluster_size", "quantize.embedding.embed_avg"},
    "GumbelVQ": {"quantize.proj.weight", "quantize.proj.bias", "quantize.embed.weight"},
}


@pytest.mark.parametrize("variant", list(QUANTIZE_KEYS))
def test_taming_state_dict_key_names(variant):
    model = make_model("taming", variant)
    sd = model.state_dict()
    assert {k for k in sd if k.startswith("quantize.")} == QUANTIZE_KEYS[variant]
    assert {k.split(".")[0] for k in sd} == {"encoder", "decoder", "quant_conv", "post_quant_conv", "quantize"}
    assert sd["post_quant_conv.weight"].shape == (8, 8, 1, 1)
    for k in ("encoder.down.0.block.0.norm1.weight", "encoder.down.0.downsample.conv.weight",
              "encoder.mid.attn_1.q.weight", "decoder.up.1.upsample.conv.weight", "decoder.up.1.attn.0.k.weight",
              "decoder.norm_out.weight", "decoder.conv_out.weight"):
        assert k in sd


def test_aliases_build_the_taming_family():
    for alias in ("TamingVQGAN", "taming_vqgan", "VQGAN", "vqgan", "EMAVQ", "emavq"):
        cfg = taming("EMAVQ")()
        cfg.family = alias
        assert type(build_model(cfg)).__name__ == "TamingVQGAN"


def test_unknown_family_lists_known_names():
    cfg = taming("VQModel")()
    cfg.family = "vqgan3000"
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    msg = str(e.value)
    assert "vqgan3000" in msg
    for name in registry.registered():
        assert name in msg
