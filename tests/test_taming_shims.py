"""taming-transformers' calling conventions on vqforge models, checked against the golden taming reference:
`quantize.get_codebook_entry`, `decode_code`, `encode(x, return_dict=False)` and `vqforge.from_taming(dir)`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vqforge
from vqforge import CheckpointError, build_model
from vqforge.config.schema import DDConfig, ModelConfig
from vqforge.quantizers import GumbelQuantizer, ResidualVectorQuantizer

from conftest import GOLDEN

ATOL = 1e-5
REF = json.loads((GOLDEN / "reference.json").read_text())["model"]


@pytest.fixture(scope="module")
def golden():
    cfg = ModelConfig(family="taming", variant="VQModel", n_embed=REF["n_embed"], embed_dim=REF["embed_dim"],
                      ddconfig=DDConfig(**REF["ddconfig"]))
    model = build_model(cfg)
    model.load_state_dict(load_file(str(GOLDEN / "vqmodel.safetensors")), strict=True)
    return model.eval(), load_file(str(GOLDEN / "expected.safetensors"))


def test_get_codebook_entry_has_tamings_signature_and_layout(golden):
    model, ex = golden
    idx = ex["indices"]  # (2, 8, 8)
    b, h, w = idx.shape
    with torch.no_grad():
        quant = model.quantize.get_codebook_entry(idx.reshape(-1), (b, h, w, REF["embed_dim"]))
        rows = model.quantize.get_codebook_entry(idx.reshape(-1), None)
    torch.testing.assert_close(quant, ex["quant"], rtol=0, atol=ATOL)  # (B, C, H, W) as taming returns it
    assert rows.shape == (b * h * w, REF["embed_dim"])
    assert torch.equal(rows, model.quantize.codebook[idx.reshape(-1)])
    with pytest.raises(ValueError, match="holds 64 positions"):
        model.quantize.get_codebook_entry(idx.reshape(-1), (1, h, w, REF["embed_dim"]))
    with pytest.raises(ValueError, match="channels"):
        model.quantize.get_codebook_entry(idx.reshape(-1), (b, h, w, 3))


def test_decode_code_and_tamings_encode_tuple(golden):
    model, ex = golden
    with torch.no_grad():
        decoded = model.decode_code(ex["indices"])
        quant, emb_loss, info = model.encode(ex["x"], return_dict=False)
        as_dict = model.encode(ex["x"], return_dict=True)
        plain = model.encode(ex["x"])
    torch.testing.assert_close(decoded, ex["recon_from_indices"], rtol=0, atol=ATOL)
    torch.testing.assert_close(quant, ex["quant"], rtol=0, atol=ATOL)
    torch.testing.assert_close(emb_loss, ex["qloss"].reshape(()), rtol=0, atol=ATOL)
    perplexity, min_encodings, indices = info
    assert min_encodings is None
    assert torch.equal(indices, ex["indices"].reshape(-1))  # taming's VectorQuantizer2 flattens them
    n = torch.bincount(indices, minlength=REF["n_embed"]).double()
    p = n[n > 0] / n.sum()
    torch.testing.assert_close(perplexity.double(), torch.exp(-(p * p.log()).sum()), rtol=1e-6, atol=0)
    assert torch.equal(plain, ex["indices"])  # vqforge's own form is unchanged
    assert torch.equal(as_dict["indices"], ex["indices"]) and torch.equal(as_dict["quant"], quant)
    assert set(as_dict) == {"quant", "emb_loss", "indices", "stats"}


def test_gumbel_get_codebook_entry_and_multilevel_refusal():
    torch.manual_seed(0)
    q = GumbelQuantizer(4, 16, 6).eval()
    idx = torch.randint(0, 16, (2, 3, 5))
    out = q.get_codebook_entry(idx.reshape(-1), (2, 3, 5, 6))
    assert torch.equal(out, q.embed.weight[idx].permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="out of range"):  # checked before the lookup, as for VQ
        q.get_codebook_entry(torch.full((4,), 16), (1, 2, 2, 6))
    with pytest.raises(ValueError, match="several index levels"):
        ResidualVectorQuantizer(2, 16, 6).get_codebook_entry(idx.reshape(-1), None)


def _zoo_dir(tmp_path, config_name="model.yaml", ckpt_name="last.ckpt"):
    from test_convert import golden_taming_state_dict, save_lightning_ckpt

    root = tmp_path / "vqgan_zoo"
    (root / "configs").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    # the zoo's model.yaml: the model section only, as the released archives have it
    (root / "configs" / config_name).write_text(f"""
model:
  base_learning_rate: 4.5e-6
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: {REF["embed_dim"]}
    n_embed: {REF["n_embed"]}
    ddconfig: {json.dumps(REF["ddconfig"])}
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {{disc_start: 100, disc_num_layers: 2, disc_ndf: 16, disc_weight: 0.8, codebook_weight: 1.0}}
""")
    save_lightning_ckpt(root / "checkpoints" / ckpt_name, golden_taming_state_dict())
    return root


def test_from_taming_reads_the_model_zoo_layout(tmp_path):
    ex = load_file(str(GOLDEN / "expected.safetensors"))
    model = vqforge.from_taming(_zoo_dir(tmp_path))
    assert not model.training and not list(tmp_path.glob("**/model.safetensors"))  # nothing written
    with torch.no_grad():
        assert torch.equal(model.encode(ex["x"]), ex["indices"])
        torch.testing.assert_close(model(ex["x"]).reconstruction, ex["recon"], rtol=0, atol=ATOL)
    from vqforge.models.taming_zoo import from_taming

    assert vqforge.from_taming is from_taming


def test_from_taming_takes_a_project_yaml_and_names_what_is_missing(tmp_path):
    root = _zoo_dir(tmp_path, config_name="2020-11-09T13-31-51-project.yaml", ckpt_name="epoch=10.ckpt")
    assert vqforge.from_taming(root).num_codes == REF["n_embed"]
    (root / "configs" / "other-project.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointError, match="several config YAMLs"):
        vqforge.from_taming(root)
    other = _zoo_dir(tmp_path / "b")
    (other / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint(.|\n)*fix: pass a taming model directory"):
        vqforge.from_taming(other)
    with pytest.raises(CheckpointError, match="not a directory"):
        vqforge.from_taming(tmp_path / "nowhere")
