"""Quantizers take sequences and video, channel-first or channel-last, and offer cosine and factorised codes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vqforge import ConfigError, build_model
from vqforge.config.schema import DDConfig, ModelConfig, QuantizerConfig
from vqforge.quantizers import (EMAVectorQuantizer, FSQuantizer, GumbelQuantizer, LookupFreeQuantizer,
                                ProductEMAQuantizer, ResidualEMAVectorQuantizer, ResidualVectorQuantizer,
                                SimVQuantizer, VectorQuantizer, build_quantizer)

C = 4


def make(kind: str):
    torch.manual_seed(0)
    return {
        "vq": lambda: VectorQuantizer(16, C),
        "ema": lambda: EMAVectorQuantizer(16, C),
        "residual": lambda: ResidualVectorQuantizer(3, 16, C),
        "residual_ema": lambda: ResidualEMAVectorQuantizer(2, 16, C),
        "gumbel": lambda: GumbelQuantizer(C, 16, C),
        "fsq": lambda: FSQuantizer([4, 4], C),
        "lfq": lambda: LookupFreeQuantizer(16, C),
        "simvq": lambda: SimVQuantizer(16, C),
        "product": lambda: ProductEMAQuantizer(16, C, 2),
        "vq_factorised_cosine": lambda: VectorQuantizer(16, C, codebook_dim=2, cosine=True),
    }[kind]()


KINDS = ["vq", "ema", "residual", "residual_ema", "gumbel", "fsq", "lfq", "simvq", "product", "vq_factorised_cosine"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channel_last", [False, True])
def test_sequences_and_video_equal_the_image_map_path(kind: str, channel_last: bool) -> None:
    q = make(kind).eval()
    levels = getattr(q, "num_subspaces", q.depth)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # sequence: N positions = one row of an image map
        seq = torch.randn(2, C, 7, generator=g)  # (B, C, N)
        ref = q(seq[:, :, None, :])  # (B, C, 1, N)
        x = seq.transpose(1, 2) if channel_last else seq
        out = q(x, channel_last=channel_last)
        want_q = ref.quantized[:, :, 0, :]
        want_i = ref.indices[..., 0, :]  # (B, N) or (B, L, N)
        if channel_last:
            want_q = want_q.transpose(1, 2)
            want_i = want_i.movedim(1, -1) if levels > 1 else want_i
        assert torch.equal(out.quantized, want_q)
        assert torch.equal(out.indices, want_i)
        assert out.indices.shape == ((2, 7, levels) if channel_last else (2, levels, 7)) if levels > 1 else (2, 7)
        assert torch.equal(q.get_output_from_indices(out.indices, channel_last=channel_last, spatial_dims=1),
                           out.quantized)

        # video: T frames through the image map, frame by frame
        vid = torch.randn(2, C, 3, 4, 5, generator=g)  # (B, C, T, H, W)
        frames = [q(vid[:, :, t]) for t in range(3)]
        x = vid.permute(0, 2, 3, 4, 1) if channel_last else vid
        out = q(x, channel_last=channel_last)
        want_q = torch.stack([f.quantized for f in frames], dim=2)  # (B, C, T, H, W)
        level_axis = 1 if levels > 1 else None
        want_i = torch.stack([f.indices for f in frames], dim=2 if level_axis else 1)  # (B, [L,] T, H, W)
        if channel_last:
            want_q = want_q.permute(0, 2, 3, 4, 1)
            want_i = want_i.movedim(1, -1) if level_axis else want_i
        assert torch.equal(out.quantized, want_q)
        assert torch.equal(out.indices, want_i)
        assert torch.equal(q.get_output_from_indices(out.indices, channel_last=channel_last, spatial_dims=3),
                           out.quantized)
        # the image default of get_output_from_indices is codes_from_indices itself
        img = q(vid[:, :, 0])
        assert torch.equal(q.get_output_from_indices(img.indices), q.codes_from_indices(img.indices))


def test_channel_last_sequence_trains_and_reaches_the_input() -> None:
    q = VectorQuantizer(16, C).train()
    x = torch.randn(2, 9, C, requires_grad=True)  # (B, N, D), vector-quantize-pytorch's layout
    out = q(x, channel_last=True)
    assert out.quantized.shape == x.shape and out.indices.shape == (2, 9)
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and q.embedding.weight.grad is not None


def test_layout_errors_name_the_accepted_shapes() -> None:
    q = VectorQuantizer(16, C)
    with pytest.raises(ValueError, match=r"\(B, C, N\), \(B, C, H, W\) or \(B, C, T, H, W\)"):
        q(torch.randn(2, C))
    with pytest.raises(ValueError, match="channel_last"):
        q(torch.randn(1, 2, 3, 4, 5, C), channel_last=True)
    with pytest.raises(ValueError, match="sequence indices"):
        q.get_output_from_indices(torch.zeros(2, 3, 4, 5, dtype=torch.long), spatial_dims=1)


# ------------------------------------------------------------- cosine and factorised codes


def test_cosine_codes_are_unit_vectors_of_largest_cosine_similarity() -> None:
    torch.manual_seed(0)
    q = EMAVectorQuantizer(32, 6, cosine=True).eval()
    z = torch.randn(2, 6, 3, 3) * 5
    out = q(z)
    codes = out.quantized.permute(0, 2, 3, 1).reshape(-1, 6)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(18))
    zf = z.permute(0, 2, 3, 1).reshape(-1, 6)
    cos = torch.nn.functional.normalize(zf, dim=1) @ torch.nn.functional.normalize(q.codebook, dim=1).t()
    assert torch.equal(out.indices.reshape(-1), cos.argmax(dim=1))
    # the commitment term is taken between unit vectors
    expected = q.beta * torch.mean((codes - torch.nn.functional.normalize(zf, dim=1)) ** 2)
    torch.testing.assert_close(out.loss, expected)
    # scale of the input does not matter, only its direction
    assert torch.equal(q(z * 0.01).indices, out.indices)
    assert torch.equal(q.codes_from_indices(out.indices), out.quantized)


def test_factorised_codes_project_in_and_out() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(32, 8, codebook_dim=3).train()
    assert q.codebook.shape == (32, 3) and q.codebook_dim == 3
    assert {"project_in.weight", "project_out.weight", "embedding.weight"} <= set(q.state_dict())
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape
    (out.quantized.square().mean() + out.loss).backward()
    assert q.project_in.weight.grad is not None and q.project_out.weight.grad is not None
    assert z.grad is not None and q.embedding.weight.grad is not None
    # the assignment happens in the 3-d code space
    h = q.project_in(z.detach().permute(0, 2, 3, 1).reshape(-1, 8))
    assert torch.equal(out.indices.reshape(-1), torch.cdist(h.double(), q.codebook.double()).argmin(dim=1))
    q.eval()
    with torch.no_grad():
        ev = q(z)
        assert torch.equal(q.codes_from_indices(ev.indices), ev.quantized)
    # plain VQ keeps taming's keys exactly
    assert set(VectorQuantizer(32, 8).state_dict()) == {"embedding.weight"}


def test_code_space_fields_reach_the_model_from_the_config() -> None:
    dd = DDConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], resolution=16, z_channels=8)
    cfg = ModelConfig(family="taming", variant="EMAVQ", n_embed=16, embed_dim=8, ddconfig=dd,
                      quantizer=QuantizerConfig(codebook_dim=4, use_cosine_sim=True))
    cfg.check("model")
    model = build_model(cfg).eval()
    assert model.quantize.codebook.shape == (16, 4) and model.quantize.cosine
    with torch.no_grad():
        x = torch.rand(1, 3, 16, 16) * 2 - 1
        assert torch.equal(model.decode(model.encode(x)), model(x).reconstruction)
    q = build_quantizer("VQModel", QuantizerConfig(codebook_dim=2), 16, 8, 8)
    assert q.codebook.shape == (16, 2) and not q.cosine
    vq2 = dataclasses.replace(cfg, family="vqvae2", variant=None)
    vq2.check("model")
    assert build_model(vq2).codebooks[0].quantizer.codebook.shape[1] == 4


@pytest.mark.parametrize("quantizer, field", [
    ({"codebook_dim": 0}, "codebook_dim"),
    ({"codebook_dim": 4, "type": "fsq"}, "codebook_dim"),
    ({"use_cosine_sim": True, "rvq_levels": 2}, "use_cosine_sim"),
])
def test_code_space_fields_are_checked(quantizer: dict, field: str) -> None:
    from conftest import tiny_config

    with pytest.raises(ConfigError, match=f"model.quantizer.{field}"):
        tiny_config(model={"variant": "VQModel", "quantizer": quantizer})


def test_code_space_fields_refused_by_families_with_their_own_quantizer() -> None:
    cfg = ModelConfig(family="dalle_vqvae", variant=None, quantizer=QuantizerConfig(use_cosine_sim=True))
    with pytest.raises(ConfigError, match="use_cosine_sim.*does not apply"):
        cfg.check("model")


def test_export_in_the_previous_systems_format_refuses_the_code_space_options(tmp_path) -> None:
    from vqforge import CheckpointError
    from vqforge.models.user_export import save_user_checkpoint

    from conftest import tiny_config

    cfg = tiny_config(model={"variant": "EMAVQ", "quantizer": {"use_cosine_sim": True}})
    with pytest.raises(CheckpointError, match="use_cosine_sim.*no counterpart"):
        save_user_checkpoint(build_model(cfg), cfg, tmp_path / "out")
