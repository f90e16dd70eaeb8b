"""Bicubic and JPEG reference points beside the tokenizer's metrics (`vqforge eval`, training validation)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqforge.eval import metrics
from vqforge.eval.baselines import (
    apply_baseline,
    baseline_specs,
    bicubic_bpp,
    bicubic_roundtrip,
    jpeg_at_bpp,
    jpeg_encode,
    jpeg_header_bytes,
    jpeg_payload_bits,
    model_factor,
)
from vqforge.eval.evaluator import evaluate

from test_eval_evaluator import _patch_ranks, _SimulatedRanks, _stand_in_net, batches_of, tiny_taming


def _photo_crops(n: int = 4, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: crops of a real photo (scikit-image's coffee, CC0)."""
    from skimage.data import coffee

    a = coffee()[100:100 + size * 2, 150:150 + size * n]
    crops = [a[: size, i * size:(i + 1) * size] for i in range(n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_bicubic_of_a_constant_image_is_exact_and_of_detail_is_not():
    flat = torch.full((2, 3, 16, 16), 0.2)
    assert torch.equal(metrics.to_uint8(bicubic_roundtrip(flat, 4)), metrics.to_uint8(flat))
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1
    checker = checker.expand(1, 3, 16, 16)
    assert metrics.psnr(checker, bicubic_roundtrip(checker, 2)) < 10  # a one-pixel pattern cannot survive x2
    x = _photo_crops()
    p2, p4 = metrics.psnr(x, bicubic_roundtrip(x, 2)), metrics.psnr(x, bicubic_roundtrip(x, 4))
    assert 20 < p4 < p2  # a larger factor loses more


def test_bicubic_matches_pillow_and_counts_kept_pixels():
    x = _photo_crops(1)
    u = metrics.to_uint8(x)[0].permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(u).resize((8, 8), Image.BICUBIC).resize((32, 32), Image.BICUBIC))
    got = metrics.to_uint8(bicubic_roundtrip(x, 4))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, ref)
    assert bicubic_bpp(4, 64, 64) == 1.5 and bicubic_bpp(2, 64, 64) == 6.0 and bicubic_bpp(16, 256, 256) == 24 / 256


def test_specs_follow_the_models_factor_and_rate():
    assert model_factor(64, 64, [32 * 32]) == 2 and model_factor(256, 256, [16 * 16]) == 16
    assert model_factor(64, 64, [8 * 8, 16 * 16]) == 4  # hierarchical: the finest grid
    names = [s.name for s in baseline_specs(2, 2.0)]
    assert names == ["bicubic_x2", "bicubic_x4", "jpeg"]  # x2 keeps 6 bpp; x4 (1.5 bpp) is the same-rate one
    assert [s.name for s in baseline_specs(4, 2.0)] == ["bicubic_x4", "jpeg"]
    assert [s.name for s in baseline_specs(16, 10 / 256)] == ["bicubic_x16", "bicubic_x32", "jpeg"]
    assert baseline_specs(4, 1.5)[-1].target_bpp == 1.5


def test_jpeg_header_is_everything_before_the_scan_data():
    a = metrics.to_uint8(_photo_crops(1))[0].permute(1, 2, 0).numpy()
    data = jpeg_encode(a, 50)
    h = jpeg_header_bytes(data)
    assert data[:2] == b"\xff\xd8"  # SOI first
    assert data[-2:] == b"\xff\xd9"  # EOI last
    sos = data.rfind(b"\xff\xda", 0, h)
    assert sos > 0 and sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big") == h
    assert jpeg_payload_bits(data) == 8 * (len(data) - h - 2)
    with pytest.raises(ValueError):
        jpeg_header_bytes(b"\xff\xd8\x00\x00")


@pytest.mark.parametrize("target", [0.75, 2.0, 4.0])
def test_jpeg_quality_is_the_largest_within_the_budget(target):
    a = metrics.to_uint8(_photo_crops(1, 48))[0].permute(1, 2, 0).numpy()
    r = jpeg_at_bpp(a, target)
    px = 48 * 48
    assert r.bpp <= target and 1 <= r.quality <= 95
    if r.quality < 95:
        assert jpeg_payload_bits(jpeg_encode(a, r.quality + 1)) > target * px  # one step more is over budget
        assert r.bpp == pytest.approx(target, abs=0.5)  # close to the budget, not far below it
    else:
        assert target > 2.5  # only the generous budget is out of reach    assert r.file_bpp > r.bpp  # the headers are real bytes, just not counted
    dec = np.asarray(Image.open(io.BytesIO(jpeg_encode(a, r.quality))))
    assert np.array_equal(r.image, dec)


def test_jpeg_budget_extremes():
    a = metrics.to_uint8(_photo_crops(1))[0].permute(1, 2, 0).numpy()
    assert jpeg_at_bpp(a, 1000.0).quality == 95
    low = jpeg_at_bpp(a, 0.001)
    assert low.quality == 1 and low.bpp > 0.001  # impossible budget: lowest quality, its true rate reported


def test_evaluate_scores_baselines_on_the_same_images():
    model = tiny_taming()  # f2, K 16: 4 bits per token, 1 bpp
    x = _photo_crops(5, 16)
    plain = evaluate(model, batches_of(x, 2))
    res = evaluate(model, batches_of(x, 2), baselines=True)
    assert plain.baselines == [] and res.psnr == plain.psnr  # the model's numbers do not change
    assert [b.name for b in res.baselines] == ["bicubic_x2", "bicubic_x8", "jpeg"]
    bic = res.baselines[0]
    assert bic.psnr == pytest.approx(metrics.psnr(x, bicubic_roundtrip(x, 2)), rel=1e-9)
    assert bic.ssim == pytest.approx(metrics.ssim(x, bicubic_roundtrip(x, 2)), rel=1e-9)
    assert bic.bpp == 6.0 and res.baselines[1].bpp == 24 / 64
    jpeg = res.baselines[2]
    y, bpp, q = apply_baseline(baseline_specs(2, res.bpp)[-1], x)
    assert jpeg.psnr == pytest.approx(metrics.psnr(x, y), rel=1e-9)
    assert jpeg.bpp == pytest.approx(float(bpp.mean())) and jpeg.jpeg_quality == pytest.approx(float(q.mean()))
    doc = json.loads(json.dumps(res.to_json()))
    assert set(doc["baselines"]) == {"bicubic_x2", "bicubic_x8", "jpeg"}
    assert doc["baselines"]["jpeg"]["method"].startswith("JPEG")
    s = res.baseline_scalars()
    assert s["bicubic_x8/psnr"] == res.baselines[1].psnr and "jpeg/bpp" in s and "jpeg/lpips" not in s


def test_baselines_get_lpips_and_rfid_when_the_model_does():
    model = tiny_taming()
    net = _stand_in_net()
    x = _photo_crops(4, 16)
    res = evaluate(model, batches_of(x, 2), lpips=lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)),
                   inception=net, baselines=True)
    for b in res.baselines:
        assert b.lpips is not None and b.rfid is not None and b.rfid >= 0
    assert res.baselines[0].lpips < res.baselines[1].lpips  # bicubic x2 keeps more than x8


def test_baseline_sums_across_processes_equal_one_process(monkeypatch):
    model = tiny_taming()
    x = _photo_crops(5, 16)
    sim = _SimulatedRanks()
    _patch_ranks(monkeypatch, sim)
    evaluate(model, batches_of(x[1::2], 2), baselines=True)  # rank 1
    sim.rank = 0
    both = evaluate(model, batches_of(x[0::2], 2), baselines=True)
    empty_sim = _SimulatedRanks()
    _patch_ranks(monkeypatch, empty_sim)
    evaluate(model, batches_of(x, 2), baselines=True)
    empty_sim.rank = 0
    empty = evaluate(model, [], baselines=True)  # a rank without images still joins every reduction
    monkeypatch.undo()
    union = evaluate(model, batches_of(torch.cat([x[0::2], x[1::2]]), 2), baselines=True)
    for got in (both, empty):
        assert [b.name for b in got.baselines] == [b.name for b in union.baselines]
        for g, u in zip(got.baselines, union.baselines):
            assert g.psnr == pytest.approx(u.psnr, rel=1e-9) and g.bpp == pytest.approx(u.bpp, rel=1e-9)
