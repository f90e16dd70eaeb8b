"""The codec with vqforge's own entropy models (not test stand-ins): saved, loaded in a fresh process state, and
coded losslessly, with the file's size matching the model's estimate."""

from __future__ import annotations

import math

import pytest
import torch

from vqforge.codec.coder import compress_tokens, decompress_tokens
from vqforge.entropy import FrameLayout, build_entropy_model, load_entropy_model, save_entropy_model

K = 16


def _tokens(t: int, d: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    base = torch.randint(0, K, (d, h, w), generator=g)
    frames = [base]
    for _ in range(t - 1):  # a slowly changing clip: most tokens repeat the previous frame's
        nxt = frames[-1].clone()
        flip = torch.rand(nxt.shape, generator=g) < 0.2
        nxt[flip] = torch.randint(0, K, (int(flip.sum()),), generator=g)
        frames.append(nxt)
    return torch.stack(frames)  # (T, D, H, W)


@pytest.mark.parametrize("name, config", [
    ("masked_groups", dict(vocab_size=K, depth=2, d_model=32, num_layers=1, nhead=4, num_groups=3)),
    ("transformer_ar", dict(vocab_size=K, d_model=32, num_layers=1, nhead=4)),
])
def test_real_entropy_models_code_losslessly_after_save_and_load(name, config, tmp_path):
    torch.manual_seed(0)
    depth = config.get("depth", 1)
    model = build_entropy_model(name, **config).eval()
    save_entropy_model(model, tmp_path / "ent")
    loaded, meta = load_entropy_model(tmp_path / "ent")
    assert meta["name"] == name
    tokens = _tokens(3, depth, 4, 5)
    tok_hash = bytes(32)
    mixed = compress_tokens(tokens, loaded, tok_hash, K, intra_period=2)  # adaptive mixing, the default
    assert torch.equal(decompress_tokens(mixed.data, loaded, tok_hash)[0], tokens)
    packed = compress_tokens(tokens, loaded, tok_hash, K, intra_period=2, adaptive=False)  # the model alone
    back, header = decompress_tokens(packed.data, loaded, tok_hash)
    assert torch.equal(back, tokens)
    # the estimate from teacher-forced logits (what training optimizes) says about what the file costs
    layout = FrameLayout(depth, 4, 5, K)
    with torch.no_grad():
        bits = 0.0
        for t in range(tokens.shape[0]):
            prev = None if t % 2 == 0 else tokens[t - 1]
            logp = torch.log_softmax(loaded.frame_logits(tokens[t], prev, layout).double(), -1)
            bits -= logp.gather(1, tokens[t].reshape(-1, 1)).sum().item() / math.log(2)
    # the coder's estimate (its integer frequencies) is the model's own -sum log2 p, and the payload is that size
    assert packed.estimate_bits == pytest.approx(bits, rel=1e-3, abs=1.0)
    assert packed.payload_bytes * 8 <= packed.estimate_bits + 64 * header.num_segments
