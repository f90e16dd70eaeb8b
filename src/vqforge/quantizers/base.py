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
