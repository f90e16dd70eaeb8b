"""Pixel reconstruction loss (L1 or L2), kept per element so the objective can add the per-sample LPIPS term."""

from __future__ import annotations

from typing import Literal

import torch

PixelLoss = Literal["l1", "l2"]


def pixel_loss(x: torch.Tensor, recon: torch.Tensor, kind: PixelLoss = "l1") -> torch.Tensor:
    """Elementwise |x - recon| ("l1") or (x - recon)^2 ("l2"), shape (N, C, H, W), in float32.

    Not reduced: the objective adds the perceptual term (N, 1, 1, 1) per sample before taking the mean, which is
    how the VQGAN nll is defined. Computed in float32 so a bf16 reconstruction does not lose the small residuals.
    """
    diff = x.float() - recon.float()  # (N, C, H, W)
    if kind == "l1":
        return diff.abs()
    if kind == "l2":
        return diff.square()
    raise ValueError(f"unknown pixel loss {kind!r}; use 'l1' or 'l2'")
