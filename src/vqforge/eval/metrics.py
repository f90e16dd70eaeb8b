"""PSNR and SSIM on images quantized to 8 bits, as papers report them.

Model images live in [-1, 1]. Before measuring, both the input and the reconstruction are mapped to the integers
0..255 as they are saved to PNG files by vqforge: `round((x + 1) * 127.5)` (torch.round: halves to even), clamped to
[0, 255]. Scores are therefore comparable with numbers computed from the written image files.

- PSNR: per image, `10 log10(255^2 / MSE)` with the MSE over all channels and pixels of that image; the data-set
  score is the mean over images (`psnr`). `psnr_from_mse` of the data-set mean MSE (the "aggregate" PSNR) is
  also offered; it weights bad images less than the per-image mean does.
- SSIM: Wang et al. 2004, 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, population
  (not sample) variances, computed on the "valid" part of the image (no padding), per RGB channel; the
  channel scores are averaged. This equals `skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)`. Computed in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..images import MAX_VALUE, _as_float64_255, mse_per_image, psnr_from_mse, psnr_per_image, to_uint8

__all__ = ["MAX_VALUE", "mse_per_image", "psnr_from_mse", "psnr_per_image", "to_uint8", "psnr", "ssim",
           "ssim_per_image", "ssim_terms", "gaussian_window", "finite_or_none"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR (dB)."""
    return float(psnr_per_image(x, y).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) float64 normalised Gaussian taps."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(r**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    # separable Gaussian on (N*C, 1, H, W), no padding: output (N*C, 1, H-10, W-10)
    k = taps.to(x)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return F.conv2d(x, k.view(1, 1, 1, -1))


def ssim_terms(a: torch.Tensor, b: torch.Tensor, taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N*C, 1, H, W) float64 on the 0..255 scale -> per image-channel (mean SSIM, mean contrast-structure cs),
    each (N*C,). Local means, variances and covariance are population statistics (E[x^2] - E[x]^2)."""
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a * mu_a
    var_b = _filter_valid(b * b, taps) - mu_b * mu_b
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    c1 = (SSIM_K1 * MAX_VALUE) ** 2
    c2 = (SSIM_K2 * MAX_VALUE) ** 2
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    ssim_map = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs
    return ssim_map.flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images ([-1, 1] floats or uint8) -> (N,) SSIM, channels averaged. H and W must be >= 11."""
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    a = _as_float64_255(x).reshape(n * c, 1, h, w)
    b = _as_float64_255(y).reshape(n * c, 1, h, w)
    per_channel = ssim_terms(a, b, gaussian_window())[0].view(n, c)  # (N, C)
    return per_channel.mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images of the per-image SSIM."""
    return float(ssim_per_image(x, y).mean())


def finite_or_none(v: float | None) -> float | None:
    """JSON has no infinity: map non-finite numbers to None."""
    if v is None or not math.isfinite(v):
        return None
    return float(v)
