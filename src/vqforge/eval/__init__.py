"""Evaluation: PSNR/SSIM on 8-bit images, LPIPS, rFID, codebook usage and bits per pixel, residual-VQ depth curves,
report images, bicubic/JPEG baselines on the same images (`baselines.py`), and the `eval` command (`command.py`;
`encode` / `decode` are `vqforge.tokens`, the reconstruction grids `vqforge.images`)."""

from .baselines import BaselineSpec, baseline_specs, bicubic_roundtrip, jpeg_at_bpp
from .codebook import CodebookUsage, LevelStats, bits_per_pixel, bits_per_pixel_by_depth, level_stats
from ..utils import HIGHER_IS_BETTER, is_better
from .evaluator import BaselineResult, DepthPoint, EvalResult, codebook_sizes, evaluate
from .fid import FeatureStats, InceptionFeatures, find_inception, frechet_distance, load_inception
from .metrics import psnr, psnr_per_image, ssim, ssim_per_image, to_uint8
from ..images import labelled_grid, reconstruction_grid, save_labelled_grid, save_reconstruction_grid
from .report import plot_rate_distortion, plot_usage_histogram

__all__ = [
    "BaselineSpec", "baseline_specs", "bicubic_roundtrip", "jpeg_at_bpp", "BaselineResult",
    "CodebookUsage", "LevelStats", "bits_per_pixel", "bits_per_pixel_by_depth", "level_stats",
    "HIGHER_IS_BETTER", "DepthPoint", "EvalResult", "codebook_sizes", "evaluate", "is_better",
    "FeatureStats", "InceptionFeatures", "find_inception", "frechet_distance", "load_inception",
    "psnr", "psnr_per_image", "ssim", "ssim_per_image", "to_uint8",
    "plot_rate_distortion", "plot_usage_histogram", "reconstruction_grid", "save_reconstruction_grid",
    "labelled_grid", "save_labelled_grid",
]
