"""The low-rate rate-distortion bench's configs (bench/rd/): the patch family at factor 16 builds from the committed
tokenizer config and codes a 256x256 frame as 4 depths of 16x16 tokens (every depth prefix decodes to full size),
and the committed entropy config parses as the few-pass model over that grid at the clips' full resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vqforge import ConfigError, build_model, load_config
from vqforge.config import parse_config
from vqforge.entropy.config import load_entropy_config

RD = Path(__file__).resolve().parents[1] / "bench" / "rd"


def test_f16_tokenizer_config_builds_and_codes_256_frames():
    cfg = load_config(RD / "tokenizer_f16.yaml")
    assert cfg.model.family == "patch" and cfg.model.patch.factor == 16
    cfg.model.patch.channels = 32  # the same architecture, narrower, to keep the test small
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    assert model.downsample_factor == 16 and model.depth == 4
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        idx = model.encode(x)
        assert idx.shape == (1, 4, 16, 16) and int(idx.max()) < 256
        for d in (1, 2, 4):
            assert model.decode(idx[:, :d]).shape == x.shape
        # a 128x128 training crop is an 8x8 grid
        assert model.encode(x[:, :, :128, :128]).shape == (1, 4, 8, 8)


def test_f16_needs_a_resolution_divisible_by_16():
    with pytest.raises(ConfigError, match="resolution"):
        parse_config({"model": {"family": "patch", "patch": {"factor": 16}}, "data": {"resolution": 120}})


def test_entropy_config_is_the_few_pass_model_at_full_frames():
    cfg, warnings, _ = load_entropy_config(RD / "entropy_f16.yaml")
    assert cfg.model.name == "masked_groups" and cfg.model.num_groups == 6
    assert cfg.tokenizer.resolution == 256 and cfg.data.sequence_length == 4
    assert not warnings
