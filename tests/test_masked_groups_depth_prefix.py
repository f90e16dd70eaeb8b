"""`masked_groups` codes a prefix of the residual depths (the codec's --depth D, `vqforge rd`'s depth curve): the
first D depths are predicted exactly as while a full frame's first D depths are coded (the deeper ones unknown),
files of a prefix round-trip, and more depths than the model was trained for are still an error."""

from __future__ import annotations

import pytest
import torch

from vqforge import ConfigError
from vqforge.codec.coder import compress_tokens, decompress_tokens
from vqforge.entropy import FrameLayout, build_entropy_model
from vqforge.entropy.base import EntropyModel

K, D, H, W = 16, 3, 4, 4


def _model():
    torch.manual_seed(0)
    return build_entropy_model("masked_groups", vocab_size=K, depth=D, d_model=32, num_layers=2, nhead=4,
                               num_groups=3).eval()


def _clip(t: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, K, (t, D, H, W), generator=g)


def test_intra_prefix_logits_equal_the_full_frames_first_depths():
    m, x = _model(), _clip(1)[0]
    with torch.no_grad():
        full = m.frame_logits(x, None, FrameLayout(D, H, W, K))
        for d in (1, 2):
            pref = m.frame_logits(x[:d], None, FrameLayout(d, H, W, K))
            torch.testing.assert_close(pref, full[: d * H * W], atol=1e-5, rtol=1e-5)


def test_prefix_teacher_forced_logits_equal_step_by_step():
    m, x = _model(), _clip(2)
    layout = FrameLayout(2, H, W, K)
    with torch.no_grad():
        fast = m.frame_logits(x[1, :2], x[0, :2], layout)
        slow = EntropyModel.frame_logits(m, x[1, :2], x[0, :2], layout)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_prefix_files_round_trip(depth):
    m, x = _model(), _clip(3)[:, :depth].contiguous()
    packed = compress_tokens(x, m, bytes(32), K, intra_period=2)
    back, header = decompress_tokens(packed.data, m, bytes(32))
    assert torch.equal(back, x) and header.depth == depth


def test_more_depths_than_trained_is_an_error():
    m = _model()
    with pytest.raises(ConfigError, match="depth 3 x 16 symbols, the tokens are depth 4"):
        m.check_layout(FrameLayout(4, H, W, K))
    with pytest.raises(ConfigError, match="train the entropy model on this tokenizer"):
        m.check_layout(FrameLayout(2, H, W, K + 1))
