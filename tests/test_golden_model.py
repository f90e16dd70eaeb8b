"""The taming-family VQGAN reproduces taming-transformers' VQModel on its own weights (golden fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqforge import build_model
from vqforge.config.schema import DDConfig, ModelConfig


from conftest import GOLDEN
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    ref = json.loads((GOLDEN / "reference.json").read_text())["model"]
    cfg = ModelConfig(family="taming", variant="VQModel", n_embed=ref["n_embed"], embed_dim=ref["embed_dim"],
                      ddconfig=DDConfig(**ref["ddconfig"]))
    model = build_model(cfg)
    weights = load_file(str(GOLDEN / "vqmodel.safetensors"))
    model.load_state_dict(weights, strict=True)
    return model.eval(), weights, load_file(str(GOLDEN / "expected.safetensors"))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape and dtype, every element within ATOL; a failure reports the largest difference and where."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def test_state_dict_keys_and_shapes_are_taming(golden):
    model, weights, _ = golden
    ours = model.state_dict()
    assert set(ours) == set(weights)
    assert all(ours[k].shape == weights[k].shape for k in weights)


def test_pieces_match_reference(golden):
    model, _, ex = golden
    with torch.no_grad():
        h = model.encode_to_latent(ex["x"])
        q = model.quantize(h)
        recon = model.decode_latent(q.quantized)
        from_indices = model.decode(ex["indices"])
    close(h, ex["h"])
    close(q.quantized, ex["quant"])
    close(q.loss, ex["qloss"].reshape(()))
    torch.testing.assert_close(q.indices, ex["indices"], rtol=0, atol=0)
    close(recon, ex["recon"])
    close(from_indices, ex["recon_from_indices"])


def test_forward_and_tokenizer_api_match_reference(golden):
    model, _, ex = golden
    with torch.no_grad():
        out = model(ex["x"])
        indices = model.encode(ex["x"])
        decoded = model.decode(indices)
    close(out.reconstruction, ex["recon"])
    torch.testing.assert_close(out.indices, ex["indices"], rtol=0, atol=0)
    torch.testing.assert_close(indices, ex["indices"], rtol=0, atol=0)
    close(out.codebook_loss, ex["qloss"].reshape(()))
    close(decoded, ex["recon_from_indices"])
