"""Taming-family VQGAN: encoder/decoder architecture for every ddconfig option, and the model around it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vqforge import ConfigError, build_model
from vqforge.config.schema import DDConfig, ModelConfig, QuantizerConfig
from vqforge.models.taming import TamingVQGAN
from vqforge.models.taming_modules import AttnBlock, Decoder, Downsample, Encoder, Upsample


def tiny_dd(**kw) -> DDConfig:
    base = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], z_channels=8, resolution=16,
                dropout=0.0)
    base.update(kw)
    return DDConfig(**base)


def tiny_model(variant: str = "VQModel", dd: DDConfig | None = None, **kw) -> TamingVQGAN:
    torch.manual_seed(0)
    cfg = ModelConfig(family="taming", variant=variant, n_embed=16, embed_dim=kw.pop("embed_dim", 8),
                      ddconfig=dd or tiny_dd(), quantizer=QuantizerConfig(**kw))
    return build_model(cfg)


DD_CASES = {
    "basic": tiny_dd(),
    "three_levels_two_attn_res": tiny_dd(ch_mult=[1, 1, 2], resolution=32, attn_resolutions=[16, 8]),
    "two_res_blocks": tiny_dd(num_res_blocks=2),
    "no_attention": tiny_dd(attn_resolutions=[]),
    "no_resample_conv": tiny_dd(resamp_with_conv=False),
    "double_z": tiny_dd(double_z=True),
    "gray_in_rgb_out": tiny_dd(in_channels=1, out_ch=3),
    "single_level": tiny_dd(ch_mult=[2], resolution=8, attn_resolutions=[8]),
    "dropout": tiny_dd(dropout=0.5),
}


@pytest.mark.parametrize("name", list(DD_CASES))
def test_encoder_decoder_shapes(name):
    dd = DD_CASES[name]
    enc, dec = Encoder(dd), Decoder(dd)
    f = dd.downsample_factor
    x = torch.randn(2, dd.in_channels, dd.resolution, dd.resolution)
    z = enc(x)
    zc = 2 * dd.z_channels if dd.double_z else dd.z_channels
    assert z.shape == (2, zc, dd.resolution // f, dd.resolution // f)
    y = dec(torch.randn(2, dd.z_channels, dd.resolution // f, dd.resolution // f))
    assert y.shape == (2, dd.out_ch, dd.resolution, dd.resolution)
    assert torch.isfinite(z).all() and torch.isfinite(y).all()


@pytest.mark.parametrize("name", list(DD_CASES))
def test_attention_and_resamplers_placed_like_the_reference(name):
    dd = DD_CASES[name]
    enc, dec = Encoder(dd), Decoder(dd)
    n = len(dd.ch_mult)
    for i in range(n):
        res = dd.resolution // 2**i
        want_attn = res in dd.attn_resolutions
        assert len(enc.down[i].block) == dd.num_res_blocks
        assert len(enc.down[i].attn) == (dd.num_res_blocks if want_attn else 0)
        assert len(dec.up[i].block) == dd.num_res_blocks + 1
        assert len(dec.up[i].attn) == (dd.num_res_blocks + 1 if want_attn else 0)
        assert hasattr(enc.down[i], "downsample") == (i != n - 1)
        assert hasattr(dec.up[i], "upsample") == (i != 0)
    keys = set(enc.state_dict()) | {f"d.{k}" for k in dec.state_dict()}
    has_resample_conv = any(".downsample.conv." in k or ".upsample.conv." in k for k in keys)
    assert has_resample_conv == (dd.resamp_with_conv and n > 1)


def test_resnet_shortcut_only_when_channels_change():
    enc = Encoder(tiny_dd(ch_mult=[1, 2, 2], resolution=32, attn_resolutions=[]))
    assert enc.down[0].block[0].nin_shortcut is None  # 32 -> 32
    assert enc.down[1].block[0].nin_shortcut.weight.shape == (64, 32, 1, 1)  # 32 -> 64
    assert enc.down[2].block[0].nin_shortcut is None  # 64 -> 64
    norm = enc.down[0].block[0].norm1
    assert (norm.num_groups, norm.eps, norm.affine) == (32, 1e-6, True)


def test_downsample_pads_right_and_bottom_only():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    d = Downsample(1, with_conv=True)
    with torch.no_grad():
        d.conv.weight.zero_()
        d.conv.bias.zero_()
        d.conv.weight[0, 0, 2, 2] = 1.0  # picks x_pad[2i+2, 2j+2]
    out = d(x)
    assert out.shape == (1, 1, 3, 3)
    assert torch.equal(out[0, 0, :2, :2], x[0, 0, 2::2, 2::2][:2, :2])
    assert (out[0, 0, 2, :] == 0).all() and (out[0, 0, :, 2] == 0).all()  # the padded row/column
    with torch.no_grad():
        d.conv.weight.zero_()
        d.conv.weight[0, 0, 0, 0] = 1.0  # top-left tap: no padding before the first row/column
    assert torch.equal(d(x)[0, 0], x[0, 0, ::2, ::2])


def test_resamplers_without_conv():
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(Downsample(4, with_conv=False)(x), F.avg_pool2d(x, 2))
    up = Upsample(4, with_conv=False)(x)
    assert torch.equal(up, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert len(list(Downsample(4, False).parameters())) == 0 and len(list(Upsample(4, False).parameters())) == 0


def test_attention_equals_explicit_softmax_formula():
    torch.manual_seed(0)
    blk = AttnBlock(32)
    for m in (blk.norm,):
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 32, 5, 3)
    with torch.no_grad():
        hn = blk.norm(x)
        q, k, v = (conv(hn).flatten(2) for conv in (blk.q, blk.k, blk.v))  # (B, C, N)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 32**0.5, dim=-1)  # (B, N, N), rows sum to 1
        ref = x + blk.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(2, 32, 5, 3))
        assert torch.allclose(blk(x), ref, atol=1e-5)


@pytest.mark.parametrize("variant", ["VQModel", "EMAVQ", "GumbelVQ"])
def test_model_forward_encode_decode(variant):
    m = tiny_model(variant).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = m(x)
        idx = m.encode(x)
        assert out.reconstruction.shape == x.shape
        assert idx.shape == (2, 8, 8) and idx.dtype == torch.int64
        assert torch.equal(idx, out.indices)
        assert int(idx.min()) >= 0 and int(idx.max()) < 16
        assert torch.allclose(m.decode(idx), out.reconstruction, atol=1e-6)
    assert out.codebook_loss.ndim == 0
    assert m.last_layer is m.decoder.conv_out.weight
    assert (m.num_codes, m.depth, m.downsample_factor) == (16, 1, 2)


def test_gumbel_layer_shapes_with_embed_dim_unlike_z_channels():
    m = tiny_model("GumbelVQ", embed_dim=4)
    sd = m.state_dict()
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1)  # z_channels -> z_channels
    assert sd["quantize.proj.weight"].shape == (16, 8, 1, 1)  # z_channels -> n_embed logits
    assert sd["quantize.embed.weight"].shape == (16, 4)  # n_embed x embed_dim
    assert sd["post_quant_conv.weight"].shape == (8, 4, 1, 1)  # embed_dim -> z_channels
    assert m(torch.randn(1, 3, 16, 16)).reconstruction.shape == (1, 3, 16, 16)


def test_double_z_feeds_quant_conv_both_halves():
    m = tiny_model("VQModel", dd=tiny_dd(double_z=True))
    assert m.state_dict()["quant_conv.weight"].shape == (8, 16, 1, 1)
    assert m(torch.randn(1, 3, 16, 16)).reconstruction.shape == (1, 3, 16, 16)


def test_residual_decode_from_every_prefix():
    m = tiny_model("VQModel", rvq_levels=3).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = m(x)
        idx = m.encode(x)
        assert idx.shape == (2, 3, 8, 8) and m.depth == 3
        # decoding the first d levels is decoding the sum of those levels' codebook rows (looked up here directly)
        summed = None
        for d in (1, 2, 3):
            book = m.quantize.level(d - 1).codebook.detach()
            codes = book[idx[:, d - 1]].permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
            summed = codes if summed is None else summed + codes
            assert torch.equal(m.decode(idx[:, :d]), m.decode_latent(summed)), d
        assert torch.equal(m.decode(idx), out.reconstruction)
        # a shorter prefix is a different (coarser) reconstruction
        assert not torch.allclose(m.decode(idx[:, :1]), out.reconstruction)


def test_set_step_reaches_the_quantizer():
    m = tiny_model("GumbelVQ", temperature_start=1.0, temperature_end=0.1, temperature_anneal_steps=10,
                   temperature_schedule="linear")
    m.set_step(0)
    t0 = m.quantize.temperature
    m.set_step(10)
    assert t0 == pytest.approx(1.0) and m.quantize.temperature == pytest.approx(0.1)


def test_dropout_is_active_in_train_mode_only():
    m = tiny_model("VQModel", dd=tiny_dd(dropout=0.5))
    x = torch.randn(1, 3, 16, 16)
    m.train()
    a, b = m.decoder(m.post_quant_conv(torch.randn(1, 8, 8, 8).expand(2, -1, -1, -1))).unbind(0)
    assert not torch.allclose(a, b)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x).reconstruction, m(x).reconstruction)


def test_taming_parameter_names():
    keys = set(tiny_model("VQModel").state_dict())
    for k in [
        "encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.0.conv1.weight",
        "encoder.down.0.block.0.norm2.bias", "encoder.down.0.block.0.conv2.weight",
        "encoder.down.0.downsample.conv.weight", "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.1.attn.0.norm.weight", "encoder.down.1.attn.0.q.weight", "encoder.down.1.attn.0.k.weight",
        "encoder.down.1.attn.0.v.weight", "encoder.down.1.attn.0.proj_out.weight", "encoder.mid.block_1.conv1.weight",
        "encoder.mid.attn_1.q.weight", "encoder.mid.block_2.conv2.bias", "encoder.norm_out.weight",
        "encoder.conv_out.weight", "decoder.conv_in.weight", "decoder.mid.block_1.norm1.weight",
        "decoder.mid.attn_1.proj_out.bias", "decoder.up.0.block.0.nin_shortcut.weight", "decoder.up.0.block.1.conv2.bias",
        "decoder.up.1.block.0.conv1.weight", "decoder.up.1.attn.1.v.bias", "decoder.up.1.upsample.conv.weight",
        "decoder.norm_out.weight", "decoder.conv_out.weight", "quant_conv.weight", "post_quant_conv.bias",
        "quantize.embedding.weight",
    ]:
        assert k in keys, k
    assert not any(".temb" in k or "conv_shortcut" in k for k in keys)
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "quant_conv", "post_quant_conv", "quantize"}


def test_channels_not_divisible_by_group_count_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        tiny_model("VQModel", dd=tiny_dd(ch=16))
    assert "model.ddconfig.ch" in str(e.value) and "32" in str(e.value)


def test_wrong_variant_and_gumbel_residual_are_config_errors():
    cfg = ModelConfig(family="taming", variant="VQModel", n_embed=16, embed_dim=8, ddconfig=tiny_dd())
    with pytest.raises(ConfigError, match="variant"):
        build_model(dataclasses.replace(cfg, variant="Nope"))
    with pytest.raises(ConfigError, match="rvq_levels"):
        build_model(dataclasses.replace(cfg, variant="GumbelVQ", quantizer=QuantizerConfig(rvq_levels=2)))
    with pytest.raises(ConfigError, match="attn_resolutions"):
        build_model(dataclasses.replace(cfg, ddconfig=tiny_dd(attn_resolutions=[5])))
