"""Adaptive mixing in the codec: the math against a plain-Python computation, exact round trips with random access,
the header flag, and that it really adapts to a clip the entropy model never saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import codec_models as cm
from vqforge.codec import CodecError, compress_tokens, decode_segment, decompress_tokens
from vqforge.codec.adaptive import ADAPTIVE_V1, AdaptiveMixer
from vqforge.codec.container import unpack
from vqforge.entropy.base import FrameLayout

TOK_HASH = bytes(range(32))


def _reference_mix(experts, credit, layout, prm):
    """One step of the mixing rule, token by token in plain Python (the module doc's formulas)."""
    weights = _weights_of(credit, prm)
    out = []
    for d, *probs, _ in experts:
        mixed = [sum(wi * pi[c] for wi, pi in zip(weights[d], probs)) for c in range(layout.vocab_size)]
        out.append([v / sum(mixed) for v in mixed])
    return np.array(out)


def _weights_of(credit, prm):
    out = []
    for c in credit:
        w = [v / sum(c) for v in c]
        w = [max(v, prm.floor) for v in w]
        out.append([v / sum(w) for v in w])
    return out


def _experts_at(p_model, pos, tokens, known, prev, counts, pairs, layout, prm):
    """Per position: (depth, p_model, p_seg, p_near, p_up, the token one depth up or None)."""
    h, w, k = layout.height, layout.width, layout.vocab_size
    res = []
    for row, q in enumerate(pos):
        d, rem = divmod(int(q), h * w)
        y, x = divmod(rem, w)
        n_d = sum(counts[d])
        p_seg = [(counts[d][c] + prm.unigram_prior) / (n_d + prm.unigram_prior * k) for c in range(k)]
        hist = [0.0] * k
        for dy in range(-prm.radius, prm.radius + 1):
            for dx in range(-prm.radius, prm.radius + 1):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < h and 0 <= xx < w):
                    continue
                j = (d * h + yy) * w + xx
                if known[j]:
                    hist[tokens[j]] += 1
                if prev is not None:
                    hist[prev[j]] += prm.center_weight if (dy, dx) == (0, 0) else 1
        total = sum(hist)
        p_near = [(hist[c] + prm.near_smoothing * p_seg[c]) / (total + prm.near_smoothing) for c in range(k)]
        up = int(tokens[q - h * w]) if d > 0 and known[q - h * w] else None
        p_up = p_seg
        if up is not None:
            row_counts = pairs[d][up]
            p_up = [(row_counts[c] + prm.near_smoothing * p_seg[c]) / (sum(row_counts) + prm.near_smoothing)
                    for c in range(k)]
        res.append((d, list(p_model[row]), p_seg, p_near, p_up, up))
    return res


def test_mixing_matches_the_formulas_step_by_step():
    """The mixer and the plain-Python formulas side by side over 3 frames of 4 steps each, updates included."""
    rng = np.random.default_rng(0)
    layout = FrameLayout(depth=2, height=5, width=6, vocab_size=7)
    prm = ADAPTIVE_V1
    mixer = AdaptiveMixer(layout)
    counts = [[0.0] * 7 for _ in range(2)]
    pairs = [[[0.0] * 7 for _ in range(7)] for _ in range(2)]  # [depth][code one depth up][code]
    credit = [[v * prm.prior_strength for v in prm.prior] for _ in range(2)]
    prev = None
    ups = 0
    for frame in range(3):
        tokens = rng.integers(0, 7, layout.numel)
        known = np.zeros(layout.numel, dtype=bool)
        buf = np.zeros(layout.numel, dtype=np.int64)
        mixer.start_frame(None if prev is None else prev.reshape(2, 5, 6))
        for pos in np.array_split(rng.permutation(layout.numel), 4):
            logits = rng.normal(size=(len(pos), 7))
            p_model = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            got = mixer.mix(p_model.copy(), pos, buf, known)
            experts = _experts_at(p_model, pos, buf, known, prev, counts, pairs, layout, prm)
            np.testing.assert_allclose(got, _reference_mix(experts, credit, layout, prm), rtol=1e-12, atol=1e-15)
            sym = tokens[pos]
            weights = _weights_of(credit, prm)
            mixer.update(sym)
            for d in {e[0] for e in experts}:
                credit[d] = [c * prm.decay for c in credit[d]]
            for (d, *probs, up), s in zip(experts, sym):
                px = [wi * pi[s] for wi, pi in zip(weights[d], probs)]
                credit[d] = [c + v / sum(px) for c, v in zip(credit[d], px)]
                counts[d][s] += 1
                if up is not None:
                    pairs[d][up][s] += 1
                    ups += 1
            buf[pos] = sym
            known[pos] = True
        np.testing.assert_allclose(mixer.credit, np.array(credit), rtol=1e-12)
        np.testing.assert_array_equal(mixer.counts, np.array(counts))
        np.testing.assert_array_equal(mixer.pairs, np.array(pairs))
        prev = tokens
    assert ups > 10  # the depth-up counts were exercised


def _clip(t: int, d: int, h: int, w: int, codes: np.ndarray, seed: int) -> torch.Tensor:
    """A clip drawn from a few codes (`codes`), blocky and slowly changing: what an unseen clip looks like to a
    model trained on other codes."""
    g = np.random.default_rng(seed)
    base = codes[g.integers(0, len(codes), (d, h // 2 + 1, w // 2 + 1))].repeat(2, 1).repeat(2, 2)[:, :h, :w]
    frames = []
    for _ in range(t):
        change = g.random((d, h, w)) < 0.1
        base = np.where(change, codes[g.integers(0, len(codes), (d, h, w))], base)
        frames.append(base.copy())
    return torch.from_numpy(np.stack(frames)).long()


@pytest.fixture(scope="module")
def trained_elsewhere() -> cm.ContextModel:
    """A context model fitted on clips that use codes 0..15 of 32."""
    torch.manual_seed(0)
    m = cm.ContextModel(32, dim=8, max_depth=2)
    cm.fit(m, _clip(6, 2, 8, 8, np.arange(16), seed=1), steps=40, lr=5e-2)
    return m.eval()


def test_round_trip_random_access_and_flag(trained_elsewhere):
    m = trained_elsewhere
    x = _clip(7, 2, 8, 8, np.arange(16, 32), seed=4)
    for adaptive in (True, False):
        c = compress_tokens(x, m, TOK_HASH, 32, intra_period=3, adaptive=adaptive)
        h = unpack(c.data)
        assert h.adaptive is adaptive
        y, _ = decompress_tokens(c.data, m, TOK_HASH)
        assert torch.equal(y, x)
        for s in range(h.num_segments):  # the mixing state restarts at every intra point
            assert torch.equal(decode_segment(c.data, h, s, m), x[3 * s:3 * s + 3])
        assert abs(c.total_bytes - c.estimate_bytes) <= 0.01 * c.estimate_bytes + 4


def test_adapts_to_a_clip_the_model_never_saw(trained_elsewhere):
    m = trained_elsewhere
    x = _clip(16, 2, 12, 12, np.arange(16, 32), seed=5)  # only codes the model was not trained on
    fixed = compress_tokens(x, m, TOK_HASH, 32, intra_period=16, adaptive=False)
    mixed = compress_tokens(x, m, TOK_HASH, 32, intra_period=16, adaptive=True)
    # the model alone pays more than a uniform code for codes it never saw; mixing learns the clip's 16 codes and
    # its slow changes: well under log2 16 = 4 bits per token
    assert fixed.bits_per_token > 5.0
    assert mixed.bits_per_token < 3.5
    # and on the model's own kind of clip mixing costs little
    y = _clip(16, 2, 12, 12, np.arange(16), seed=6)
    own_fixed = compress_tokens(y, m, TOK_HASH, 32, intra_period=16, adaptive=False)
    own_mixed = compress_tokens(y, m, TOK_HASH, 32, intra_period=16, adaptive=True)
    assert own_mixed.estimate_bits < 1.05 * own_fixed.estimate_bits


def test_unknown_flags_are_an_error(trained_elsewhere):
    x = _clip(2, 2, 8, 8, np.arange(16), seed=7)
    data = bytearray(compress_tokens(x, trained_elsewhere, TOK_HASH, 32).data)
    data[10] |= 0x80  # a flag this version does not know; the header CRC is fixed up so only the flag is wrong
    import struct
    import zlib
    size = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, size - 4, zlib.crc32(bytes(data[:size - 4])))
    with pytest.raises(CodecError, match="byte 10: unknown flags"):
        decompress_tokens(bytes(data), trained_elsewhere, TOK_HASH)


def test_mixed_probabilities_are_distributions():
    layout = FrameLayout(depth=1, height=4, width=4, vocab_size=5)
    mixer = AdaptiveMixer(layout)
    mixer.start_frame(np.zeros((1, 4, 4), dtype=np.int64))
    p = mixer.mix(np.full((16, 5), 0.2), np.arange(16), np.zeros(16, dtype=np.int64), np.zeros(16, dtype=bool))
    assert np.all(p > 0) and np.allclose(p.sum(1), 1.0)
    # the co-located previous token (code 0 everywhere) is favoured over the others
    assert np.all(p[:, 0] > p[:, 1])


@pytest.mark.parametrize("adaptive", [True, False])
def test_coded_bits_is_what_the_file_costs(trained_elsewhere, adaptive):
    from vqforge.codec import coded_bits

    x = _clip(5, 2, 8, 8, np.arange(8, 24), seed=8)
    c = compress_tokens(x, trained_elsewhere, TOK_HASH, 32, intra_period=3, adaptive=adaptive)
    per = coded_bits(x, trained_elsewhere, 32, intra_period=3, adaptive=adaptive)
    assert per.shape == (5, 2)
    assert per.sum() == pytest.approx(c.estimate_bits, rel=1e-12)
    assert abs(c.payload_bytes - per.sum() / 8) <= 4 * 2 + 0.01 * c.payload_bytes  # 2 segments, a word each at most


def test_teacher_forced_count_matches_the_coder(trained_elsewhere):
    from vqforge.codec import coded_bits

    x = _clip(6, 2, 8, 8, np.arange(8, 24), seed=9)
    for independent in (False, True):
        step = coded_bits(x, trained_elsewhere, 32, intra_period=4, independent=independent)
        forced = coded_bits(x, trained_elsewhere, 32, intra_period=4, independent=independent, teacher_forced=True)
        np.testing.assert_allclose(forced, step, rtol=1e-4)


def test_depth_up_counts_only_for_residual_tokens_of_moderate_k():
    assert AdaptiveMixer(FrameLayout(depth=2, height=2, width=2, vocab_size=1024)).pairs.shape == (2, 1024, 1024)
    assert AdaptiveMixer(FrameLayout(depth=2, height=2, width=2, vocab_size=1025)).pairs is None  # D·K·K too large
    assert AdaptiveMixer(FrameLayout(depth=1, height=2, width=2, vocab_size=16)).pairs is None  # single level


def test_coded_bits_refuses_a_bad_intra_period(trained_elsewhere):
    from vqforge.codec import coded_bits

    with pytest.raises(CodecError, match="intra period must be >= 1"):
        coded_bits(_clip(2, 2, 8, 8, np.arange(16), seed=10), trained_elsewhere, 32, intra_period=0)
