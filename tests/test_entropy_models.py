"""The entropy-model contract the codec relies on (vqforge/entropy/base.py), for every registered model:
the schedule covers every position once, teacher-forced `frame_logits` equal step-by-step `step_logits`, a step's
logits never see a token that is not yet known, intra frames carry nothing over, saving/loading keeps the hash."""

from __future__ import annotations

import pytest
import torch

from vqforge.entropy import (EntropyModel, FrameLayout, build_entropy_model, entropy_model_hash, load_entropy_model,
                             registered_entropy_models, save_entropy_model)
from vqforge.entropy.models import bayer_rank, group_sizes
from vqforge.errors import ConfigError

K = 11
SMALL = {
    "transformer_ar": dict(d_model=16, num_layers=2, nhead=2),
    "masked_groups": dict(d_model=16, num_layers=2, nhead=2, num_groups=3),
}
LAYOUTS = [FrameLayout(1, 1, 1, K), FrameLayout(1, 3, 5, K), FrameLayout(2, 4, 4, K)]


def make(name: str, depth: int = 2, seed: int = 0, **kw) -> EntropyModel:
    torch.manual_seed(seed)
    cfg = dict(SMALL[name], **kw)
    if name == "masked_groups":
        cfg["depth"] = depth
    m = build_entropy_model(name, vocab_size=K, **cfg).eval()
    with torch.no_grad():  # non-trivial weights everywhere (zero-initialised vectors too)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def frame(layout: FrameLayout, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, layout.vocab_size, (layout.depth, layout.height, layout.width), generator=g)


def stepwise(model: EntropyModel, tokens, prev, layout, fill: torch.Tensor | None = None) -> torch.Tensor:
    """What a decoder sees: step_logits per step, with not-yet-decoded positions holding `fill` (garbage)."""
    out = torch.empty(layout.numel, layout.vocab_size)
    known = torch.zeros(layout.numel, dtype=torch.bool)
    work = (fill if fill is not None else torch.zeros_like(tokens)).clone().reshape(-1)
    flat = tokens.reshape(-1)
    for i, pos in enumerate(model.schedule(layout)):
        out[pos] = model.step_logits(work.view(tokens.shape), known.view(tokens.shape), prev, layout, i)
        work[pos] = flat[pos]
        known[pos] = True
    return out


def test_both_designs_are_registered():
    assert {"transformer_ar", "masked_groups"} <= set(registered_entropy_models())
    with pytest.raises(ConfigError, match="unknown entropy model"):
        build_entropy_model("transformer_arr", vocab_size=K)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_schedule_covers_every_position_once(name, layout):
    m = make(name, depth=layout.depth)
    steps = m.schedule(layout)
    allpos = torch.cat(steps)
    assert allpos.dtype == torch.int64
    assert torch.equal(allpos.sort().values, torch.arange(layout.numel))  # disjoint and complete
    assert all(len(s) > 0 for s in steps)
    assert all(torch.equal(a, b) for a, b in zip(steps, m.schedule(layout)))  # deterministic


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("layout", LAYOUTS[1:], ids=str)
@pytest.mark.parametrize("with_prev", [False, True])
def test_frame_logits_equal_step_by_step(name, layout, with_prev):
    m = make(name, depth=layout.depth)
    tok, prev = frame(layout, 1), (frame(layout, 2) if with_prev else None)
    with torch.no_grad():
        teacher = m.frame_logits(tok, prev, layout)
    steps = stepwise(m, tok, prev, layout, fill=frame(layout, 3))
    assert teacher.shape == (layout.numel, K)
    torch.testing.assert_close(teacher, steps, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_step_never_sees_unknown_tokens(name):
    layout = FrameLayout(2, 3, 4, K)
    m = make(name)
    tok, prev = frame(layout, 1), frame(layout, 2)
    steps = m.schedule(layout)
    known = torch.zeros(layout.numel, dtype=torch.bool)
    for i, pos in enumerate(steps):
        base = m.step_logits(tok, known.view(tok.shape), prev, layout, i)
        other = tok.clone().reshape(-1)
        g = torch.Generator().manual_seed(i)
        shift = torch.randint(1, K, (int((~known).sum()),), generator=g)
        other[~known] = (other[~known] + shift) % K  # every unknown token changes, this step's own included
        changed = m.step_logits(other.view(tok.shape), known.view(tok.shape), prev, layout, i)
        torch.testing.assert_close(base, changed, atol=2e-5, rtol=1e-5)
        known[pos] = True
    # teacher forcing too: changing the tokens of steps >= i leaves the logits of steps < i alone
    cut = len(steps) // 2
    later = torch.cat(steps[cut:])
    other = tok.clone().reshape(-1)
    other[later] = (other[later] + 1) % K
    with torch.no_grad():
        a = m.frame_logits(tok, prev, layout)
        b = m.frame_logits(other.view(tok.shape), prev, layout)
    earlier = torch.cat(steps[:cut])
    torch.testing.assert_close(a[earlier], b[earlier], atol=2e-5, rtol=1e-5)
    assert not torch.allclose(a[later], b[later])  # and the later ones do depend on what came before them


@pytest.mark.parametrize("name", sorted(SMALL))
def test_prev_is_used_and_intra_frames_carry_nothing_over(name):
    layout = FrameLayout(2, 3, 4, K)
    m = make(name)
    tok, prev_a, prev_b = frame(layout, 1), frame(layout, 2), frame(layout, 3)
    with torch.no_grad():
        intra = m.frame_logits(tok, None, layout)
        assert not torch.allclose(m.frame_logits(tok, prev_a, layout), m.frame_logits(tok, prev_b, layout))
    # step-by-step: an intra frame decoded right after an inter frame equals one decoded by a fresh model
    stepwise(m, frame(layout, 4), prev_a, layout)
    after = stepwise(m, tok, None, layout)
    fresh = stepwise(make(name), tok, None, layout)
    assert torch.equal(after, fresh)
    torch.testing.assert_close(after, intra, atol=2e-5, rtol=1e-5)


def test_ar_step_logits_do_not_depend_on_call_history():
    """The key/value cache must give bit-identical logits whether a step is reached step by step or directly, so
    an encoder and a decoder that call steps differently still agree."""
    layout = FrameLayout(1, 3, 4, K)
    m = make("transformer_ar")
    tok, prev = frame(layout, 1), frame(layout, 2)
    seq = stepwise(m, tok, prev, layout)
    for i in (0, 5, layout.numel - 1):
        m.reset_cache()
        known = torch.arange(layout.numel) < i
        direct = m.step_logits(tok, known.view(tok.shape), prev, layout, i)
        assert torch.equal(direct, seq[i:i + 1])


def test_masked_groups_schedule_depth_major_and_spread():
    m = make("masked_groups", num_groups=4)
    layout = FrameLayout(2, 8, 8, K)
    steps = m.schedule(layout)
    assert len(steps) == 8 == m.passes_per_frame(layout)
    assert all(int(s.max()) < 64 for s in steps[:4]) and all(int(s.min()) >= 64 for s in steps[4:])
    first = steps[0]
    rows, cols = first // 8, first % 8
    assert rows.unique().numel() >= 3 and cols.unique().numel() >= 3  # not a block in one corner
    sizes = [len(s) for s in steps[:4]]
    assert sizes == sorted(sizes) and sum(sizes) == 64  # cosine: small first groups
    assert sorted(bayer_rank(4, 4).tolist()) == list(range(16))
    assert group_sizes(3, 6, "uniform") == [1, 1, 1]
    assert group_sizes(10, 2, "uniform") == [5, 5]


def test_ar_layout_checks_name_the_fix():
    m = build_entropy_model("transformer_ar", vocab_size=K, d_model=16, num_layers=1, nhead=2, max_seq_len=20)
    with pytest.raises(ConfigError, match="max_seq_len >= 24"):
        m.check_layout(FrameLayout(1, 3, 4, K))
    with pytest.raises(ConfigError, match="nhead"):
        build_entropy_model("transformer_ar", vocab_size=K, d_model=16, nhead=3)
    mg = build_entropy_model("masked_groups", vocab_size=K, depth=2, d_model=16, num_layers=1, nhead=2)
    with pytest.raises(ConfigError, match="depth 2"):  # a prefix (depth 1) is fine, more depths are not
        mg.check_layout(FrameLayout(3, 3, 4, K))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_load_keeps_hash_and_logits(name, tmp_path):
    m = make(name)
    save_entropy_model(m, tmp_path / "run" / "model", extra={"tokenizer_hash": "abc"})
    back, meta = load_entropy_model(tmp_path / "run")
    assert meta["tokenizer_hash"] == "abc" and back.name == name
    assert entropy_model_hash(back) == entropy_model_hash(m)
    layout = FrameLayout(2, 2, 3, K)
    tok, prev = frame(layout, 5), frame(layout, 6)
    with torch.no_grad():
        assert torch.equal(back.frame_logits(tok, prev, layout), m.frame_logits(tok, prev, layout))
    other = make(name, seed=1)
    assert entropy_model_hash(other) != entropy_model_hash(m)


def test_masked_groups_trains_on_exactly_the_decoders_view():
    """The training input at a sampled coding step is what the decoder knows at that step: the training loss of
    that step's positions equals the cross-entropy of `step_logits` there."""
    import torch.nn.functional as F

    layout = FrameLayout(2, 4, 4, K)
    m = make("masked_groups", num_groups=3)
    tok, prev = frame(layout, 1), frame(layout, 2)
    steps = m.schedule(layout)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        s = int(torch.randint(0, len(steps), (1,), generator=torch.Generator().manual_seed(seed)))
        with torch.no_grad():
            nll, depth = m.training_nll(tok[None], prev[None], generator=g)
        t, group = divmod(s, 3)
        assert (depth == t).all()
        unknown_hw = [p for p in range(16) if not any(p + t * 16 == q for st in steps[t * 3:s] for q in st.tolist())]
        assert nll.numel() == len(unknown_hw)  # every not-yet-known position of depth t, nothing else
        known = torch.zeros(layout.numel, dtype=torch.bool)
        for st in steps[:s]:
            known[st] = True
        logits = m.step_logits(tok, known.view(tok.shape), prev, layout, s)
        want = F.cross_entropy(logits, tok.reshape(-1)[steps[s]], reduction="none")
        got = nll[[unknown_hw.index(int(p) - t * 16) for p in steps[s]]]
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_importing_the_package_registers_both_models():
    """The codec imports only `vqforge.entropy` before `load_entropy_model`: the registry must be filled by then."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import vqforge.entropy as e; print(e.registered_entropy_models())"],
                         capture_output=True, text=True, check=True).stdout
    assert "masked_groups" in out and "transformer_ar" in out
