"""masked_groups with `patch_size` p > 1 (p×p token positions per Transformer position, for large token grids) and
the step path that runs the last block and the head only at a coding step's positions: the same contract as
tests/test_entropy_models.py (teacher forcing equals step by step, no step sees an unknown token), the config key
reaches the model, bad grids and values are errors that name the fix, and the codec round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from vqforge.codec import compress_tokens, decompress_tokens
from vqforge.entropy import FrameLayout, build_entropy_model, entropy_model_hash
from vqforge.entropy.config import parse_entropy_config
from vqforge.entropy.trainer import build_model
from vqforge.errors import ConfigError

K = 13


def make(patch_size: int, depth: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    m = build_entropy_model("masked_groups", vocab_size=K, depth=depth, d_model=16, num_layers=2, nhead=2,
                            num_groups=3, patch_size=patch_size).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def frame(layout: FrameLayout, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (layout.depth, layout.height, layout.width), generator=g)


def stepwise(model, tokens, prev, layout, fill):
    out = torch.empty(layout.numel, K)
    known = torch.zeros(layout.numel, dtype=torch.bool)
    work, flat = fill.clone().reshape(-1), tokens.reshape(-1)
    for i, pos in enumerate(model.schedule(layout)):
        out[pos] = model.step_logits(work.view(tokens.shape), known.view(tokens.shape), prev, layout, i)
        work[pos] = flat[pos]
        known[pos] = True
    return out


@pytest.mark.parametrize("patch_size,layout", [(2, FrameLayout(2, 4, 6, K)), (3, FrameLayout(1, 6, 3, K)),
                                               (1, FrameLayout(2, 5, 3, K))], ids=str)
@pytest.mark.parametrize("with_prev", [False, True])
def test_frame_logits_equal_step_by_step(patch_size, layout, with_prev):
    m = make(patch_size, depth=layout.depth)
    tok, prev = frame(layout, 1), (frame(layout, 2) if with_prev else None)
    with torch.no_grad():
        teacher = m.frame_logits(tok, prev, layout)
        batch = m.batch_logits(tok[None], None if prev is None else prev[None])[0]
    torch.testing.assert_close(teacher, stepwise(m, tok, prev, layout, fill=frame(layout, 3)), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(batch, teacher, atol=2e-5, rtol=1e-5)


def test_a_patch_step_never_sees_unknown_tokens_but_sees_known_ones_in_its_patch():
    layout = FrameLayout(2, 4, 4, K)
    m = make(2)
    tok, prev = frame(layout, 1), frame(layout, 2)
    known = torch.zeros(layout.numel, dtype=torch.bool)
    for i, pos in enumerate(m.schedule(layout)):
        base = m.step_logits(tok, known.view(tok.shape), prev, layout, i)
        other = tok.clone().reshape(-1)
        other[~known] = (other[~known] + 1 + i % (K - 1)) % K
        torch.testing.assert_close(base, m.step_logits(other.view(tok.shape), known.view(tok.shape), prev,
                                                       layout, i), atol=2e-5, rtol=1e-5)
        if known.any():  # a known token does change the prediction
            other = tok.clone().reshape(-1)
            other[known] = (other[known] + 1) % K
            assert not torch.allclose(base, m.step_logits(other.view(tok.shape), known.view(tok.shape), prev,
                                                          layout, i))
        known[pos] = True


def test_patch_size_is_a_config_key_that_reaches_the_model_and_keeps_old_hashes():
    raw = {"model": {"name": "masked_groups", "patch_size": 2, "d_model": 16, "num_layers": 1, "nhead": 2},
           "tokenizer": {"path": "tok"}, "data": {"train": ["x"]}}
    cfg, _, _ = parse_entropy_config(raw)
    m = build_model(cfg, FrameLayout(1, 8, 8, K))
    assert m.patch_size == 2 and m.model_config()["patch_size"] == 2
    assert m.patch_in.in_features == 4 * 16 and m.head.out_features == 4 * K
    # p = 1 leaves the saved config (and so the hash of models saved before the option) as it was
    one = build_entropy_model("masked_groups", vocab_size=K, d_model=16, num_layers=1, nhead=2)
    assert "patch_size" not in one.model_config() and not hasattr(one, "patch_in")
    assert entropy_model_hash(one) != entropy_model_hash(
        build_entropy_model("masked_groups", vocab_size=K, d_model=16, num_layers=1, nhead=2, patch_size=2))
    raw["model"]["patch_size"] = 0
    with pytest.raises(ConfigError, match="patch_size"):
        parse_entropy_config(raw)
    raw["model"].update(name="transformer_ar", patch_size=2)
    _, warns, _ = parse_entropy_config(raw)
    assert any("patch_size" in w and "no effect" in w for w in warns)


def test_a_grid_the_patches_do_not_divide_is_an_error_naming_the_fix():
    m = make(2, depth=1)
    with pytest.raises(ConfigError, match="(?s)divisible into 2x2 patches.*patch_size that divides"):
        m.frame_logits(frame(FrameLayout(1, 4, 5, K), 0), None, FrameLayout(1, 4, 5, K))
    with pytest.raises(ConfigError, match="patch_size"):
        build_entropy_model("masked_groups", vocab_size=K, patch_size=0)


def test_codec_round_trip_with_patches_is_exact():
    m = make(2, depth=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, K, (3, 2, 4, 6), generator=g)
    c = compress_tokens(x, m, bytes(32), K, intra_period=2)
    y, _ = decompress_tokens(c.data, m)
    assert torch.equal(x, y)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_step_logits_do_not_depend_on_call_history_or_stale_weights(patch_size):
    """The previous frame's input part is computed once per frame and reused: results must be bit-identical to a
    fresh model's whatever frames came before, and follow in-place weight changes (an optimizer step, a load)."""
    layout = FrameLayout(2, 4, 4, K)
    m, fresh = make(patch_size), make(patch_size)
    tok, pa, pb = frame(layout, 1), frame(layout, 2), frame(layout, 3)
    known = torch.zeros(layout.numel, dtype=torch.bool).view(tok.shape)
    for prev in (pa, pb, None, pa, pa.clone()):
        got = m.step_logits(tok, known, prev, layout, 0)
        assert torch.equal(got, fresh.step_logits(tok, known, prev, layout, 0))
        fresh._prev_cache = None
    with torch.no_grad():
        m.prev_embed.weight.mul_(2.0)
        fresh.prev_embed.weight.mul_(2.0)
    fresh._prev_cache = None
    assert torch.equal(m.step_logits(tok, known, pa, layout, 0), fresh.step_logits(tok, known, pa, layout, 0))
    m.load_state_dict(make(patch_size, seed=7).state_dict())
    assert torch.equal(m.step_logits(tok, known, pa, layout, 0),
                       make(patch_size, seed=7).step_logits(tok, known, pa, layout, 0))
