"""The named output of every tokenizer model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor  # (N, C, H, W) in roughly [-1, 1]
    indices: torch.Tensor | list[torch.Tensor]  # (N, h, w), (N, D, h, w) residual, or one map per level (coarsest first)
    codebook_loss: torch.Tensor  # scalar
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached: usage, perplexity, per level "l{i}/usage"
