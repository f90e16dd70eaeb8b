"""MS-SSIM (Wang, Simoncelli & Bovik 2003) on plain torch, on images quantized to 8 bits like `metrics`.

Five scales with the paper's weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); between scales a 2x2 average pool
(odd sizes drop the last row/column). At every scale the SSIM terms are those of `metrics.ssim_per_image`
(11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, population statistics, "valid" region, float64):
scales 1..4 contribute their mean contrast-structure term cs, the last scale its full SSIM; each is clamped at 0
before the power (as TensorFlow's `ssim_multiscale` does), and the RGB channels' scores are averaged.
Images need at least 11 * 2**4 = 176 pixels per side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..images import _as_float64_255
from .metrics import SSIM_WINDOW, gaussian_window, ssim_terms

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_per_image(x: torch.Tensor, y: torch.Tensor, weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """(N, C, H, W) images ([-1, 1] floats or uint8) -> (N,) MS-SSIM, channels averaged."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, c, h, w = x.shape
    need = SSIM_WINDOW * 2 ** (len(weights) - 1)
    if min(h, w) < need:
        raise ValueError(f"MS-SSIM with {len(weights)} scales needs images of at least {need}x{need}, got {h}x{w}")
    a = _as_float64_255(x).reshape(n * c, 1, h, w)
    b = _as_float64_255(y).reshape(n * c, 1, h, w)
    taps = gaussian_window()
    score = torch.ones(n * c, dtype=torch.float64)
    for j, wt in enumerate(weights):
        ssim, cs = ssim_terms(a, b, taps)
        term = ssim if j == len(weights) - 1 else cs
        score = score * term.clamp(min=0) ** wt
        if j < len(weights) - 1:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return score.view(n, c).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images of the per-image MS-SSIM."""
    return float(ms_ssim_per_image(x, y).mean())
