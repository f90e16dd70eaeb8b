"""`vqforge rd` and its parts: test clips, MS-SSIM, KID, BD-rate, size matching, and an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import codec_models as cm
from conftest import tiny_config
from vqforge.codec.bdrate import BDRateError, bd_rate
from vqforge.codec.rd import (
    MATCH_TOLERANCE,
    decode_reference,
    encode_reference,
    jpeg_near,
    load_clips,
    match_reference,
    run_rd,
    write_report,
)
from vqforge.data.test_clips import HELD_OUT_CLIPS, clip_sha256, render_clip
from vqforge.eval.kid import kid_from_features
from vqforge.eval.metrics import ssim_per_image
from vqforge.eval.msssim import ms_ssim_per_image


def test_test_clips_are_deterministic_and_move():
    a = render_clip("pan_chelsea", frames=4, size=64)
    b = render_clip("pan_chelsea", frames=4, size=64)
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8
    assert clip_sha256(a) == clip_sha256(b)
    assert not np.array_equal(a[0], a[1])  # the window moves
    z = render_clip("zoom_coffee", frames=3, size=32)
    assert not np.array_equal(z[0], z[2])
    cut = render_clip("cut_chelsea_coffee", frames=6, size=32)
    assert np.array_equal(cut[:3], render_clip("pan_chelsea", frames=3, size=32))
    assert np.array_equal(cut[3:], render_clip("pan_coffee", frames=3, size=32))
    from vqforge.errors import ConfigError

    with pytest.raises(ConfigError, match="pan_<photo>"):
        render_clip("spin_chelsea")
    with pytest.raises(ConfigError, match="unknown photo"):
        render_clip("pan_nothing")


def test_ms_ssim_reduces_to_ssim_with_one_scale_and_orders_distortions():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 176, 176, generator=g) * 255).to(torch.uint8)
    y = (x.float() + torch.randn(x.shape, generator=g) * 10).clamp(0, 255).to(torch.uint8)
    assert torch.allclose(ms_ssim_per_image(x, y, weights=(1.0,)), ssim_per_image(x, y))
    assert torch.allclose(ms_ssim_per_image(x, x), torch.ones(2, dtype=torch.float64))
    worse = (x.float() + torch.randn(x.shape, generator=g) * 40).clamp(0, 255).to(torch.uint8)
    s1, s2 = ms_ssim_per_image(x, y), ms_ssim_per_image(x, worse)
    assert (s2 < s1).all() and (s1 < 1).all()
    with pytest.raises(ValueError, match="176x176"):
        ms_ssim_per_image(x[..., :100, :100], y[..., :100, :100])


def test_kid_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g).double(), torch.randn(7, 5, generator=g).double() + 0.5
    k = lambda u, v: (float(u @ v) / 5 + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(b[i], b[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(k(a[i], b[j]) for i in range(6) for j in range(7)) / 42
    assert kid_from_features(a, b) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    same = kid_from_features(torch.randn(400, 5, generator=g), torch.randn(400, 5, generator=g), subset_size=100)
    shifted = kid_from_features(torch.randn(400, 5, generator=g), torch.randn(400, 5, generator=g) + 1, subset_size=100)
    assert abs(same) < 0.05 < shifted


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_known_cases(method):
    rate = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    psnr = 30 + 6 * np.log10(rate)  # log-linear curve
    # the same quality at 80 % of the rate: -20 %
    assert bd_rate(rate, psnr, 0.8 * rate, psnr, method) == pytest.approx(-20.0, abs=1e-6)
    # 1.5 dB better at every rate = 10**(-1.5/6) of the rate at equal quality
    assert bd_rate(rate, psnr, rate, psnr + 1.5, method) == pytest.approx((10 ** (-1.5 / 6) - 1) * 100, abs=1e-6)
    assert bd_rate(rate, psnr, rate, psnr, method) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(BDRateError, match="overlap"):
        bd_rate(rate, psnr, rate, psnr + 100, method)
    if method == "cubic":
        with pytest.raises(BDRateError, match="at least 4"):
            bd_rate(rate[:3], psnr[:3], rate, psnr, method)


def test_reference_codecs_and_size_matching():
    import av

    frames = render_clip("pan_chelsea", frames=4, size=64)
    codecs = [c for c in ("libx264", "libx265") if c in av.codecs_available]
    assert "libx264" in codecs
    small = encode_reference(frames, "libx264", "yuv420p", crf=40)
    big = encode_reference(frames, "libx264", "yuv444p", crf=10)
    assert len(small) < len(big)
    dec = decode_reference(big)
    assert dec.shape == frames.shape and np.abs(dec.astype(int) - frames).mean() < 4
    target = (len(small) + len(big)) // 2
    m = match_reference(frames, "libx264", "yuv420p", target, 25)
    assert m["matched"] and abs(len(m["data"]) / target - 1) <= MATCH_TOLERANCE and m["setting"].startswith("crf")
    data, q = jpeg_near(frames[0], 1500)
    assert 1 <= q <= 95 and abs(len(data) - 1500) < 600


def test_rd_end_to_end(tmp_path):
    import vqforge
    from vqforge.models.pretrained import save_pretrained

    torch.manual_seed(0)
    cfg = tiny_config(model={"quantizer": {"rvq_levels": 2}}, data={"resolution": 32, "resize": 32})
    tok = save_pretrained(vqforge.build_model(cfg), cfg, tmp_path / "tok")
    ent = cm.UniformModel(32)
    clips = load_clips([HELD_OUT_CLIPS[0]], [], frames=2, size=176, builtin=True)
    lines: list[str] = []
    report = run_rd(tok, ent, clips, crfs=[35, 50], codecs=["libx264"], pix_fmts=["yuv420p"], intra_period=2,
                    kid=False, log=lines.append)
    rows = report["rows"]
    assert set(rows) >= {"vqforge|1", "vqforge|2", "vqforge-intra|1", "libx264|yuv420p|crf35",
                         "match|libx264|yuv420p|2", "match|jpeg|1"}
    # uniform model: depth 2 costs twice the payload of depth 1; whole files include the header
    v1, v2 = rows["vqforge|1"], rows["vqforge|2"]
    assert v2["bytes"] > 1.9 * v1["bytes"] - 2000 and v2["bytes"] > v1["bytes"]
    assert v1["bpp"] == pytest.approx(8 * v1["bytes"] / (2 * 176 * 176))
    assert all(0 < r["msssim"] <= 1 and r["psnr"] > 5 for r in rows.values())
    m = rows["match|libx264|yuv420p|2"]
    assert len(m["size_ratio"]) == 1 and (m["matched"] == (abs(m["size_ratio"][0] - 1) <= MATCH_TOLERANCE))
    stats = report["codec_stats"]
    assert all(abs(s["bytes"] - s["estimate_bytes"]) <= 0.01 * s["estimate_bytes"] + 8 for s in stats)
    assert len(report["bd_rate"]) == 4
    assert all((e["bd_rate_percent"] is None) == ("why" in e) for e in report["bd_rate"])
    assert any("LPIPS skipped" in n for n in report["notes"]) == (v1["lpips"] is None)
    written = write_report(report, tmp_path / "rd")
    assert json.loads(written[0].read_text())["clips"][0]["name"] == "pan_chelsea"
    assert "Matched sizes" in written[1].read_text()
    assert written[2].stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--frames", "1"], "--frames: must be >= 2"),
    (["--clips", "spin_chelsea"], "unknown test clip"),
    (["--no-test-clips"], "no clips to measure"),
])
def test_rd_cli_errors(tmp_path, capsys, args, message):
    from vqforge.cli import main

    assert main(["rd", str(tmp_path / "tok"), str(tmp_path / "ent"), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
