"""What every quantizer returns and offers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, C, H, W), straight-through: gradients reach the encoder
    indices: torch.Tensor  # (B, H, W) int64, or (B, D, H, W) for residual quantizers with depth D
    loss: torch.Tensor  # scalar: codebook + commitment (+ KL for Gumbel); zeros for EMA codebook terms
    # detached scalars for logging: "usage" (fraction of codes used in this batch), "perplexity", ...
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class. Subclasses implement forward(z) -> QuantizerOutput and codes_from_indices."""

    num_codes: int  # K, codebook size (per level)
    depth: int = 1  # D, number of residual levels

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, D', H, W) with D' <= depth (a prefix) -> (B, C, H, W) quantized vectors."""
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Called by the trainer before every generator step (temperature schedules, restarts)."""


def check_index_range(indices: torch.Tensor, num_codes: int) -> None:
    """Indices from outside (a file, a caller) must be integers in [0, K): checked before a lookup, where an
    out-of-range index would be a device-side assert on CUDA that poisons the process."""
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    if indices.numel() == 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= num_codes:
        raise ValueError(f"indices out of range: found values in [{lo}, {hi}], but the codebook has {num_codes} codes "
                         f"(valid: 0..{num_codes - 1}); the indices were made by another model or the file is damaged")


def single_index_map(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, int, int, int]:
    """(B, H, W) or (B, 1, H, W) indices of a one-map quantizer, checked -> (flat (B·H·W,), B, H, W)."""
    if indices.dim() == 4 and indices.shape[1] == 1:
        indices = indices[:, 0]
    if indices.dim() != 3:
        raise ValueError(f"expected indices of shape (B, H, W), got {tuple(indices.shape)}")
    check_index_range(indices, num_codes)
    b, h, w = indices.shape
    return indices.reshape(-1), b, h, w
