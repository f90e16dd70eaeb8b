"""SimVQ (Zhu et al. 2024, "Addressing representation collapse in vector quantized models with one linear layer").

The codebook is C·W: a frozen random matrix C (K, d), drawn once from N(0, std²) and never trained, times one learned
linear layer W (d -> d, with bias). Assignment is the usual nearest neighbour against C·W, but the gradient of the
codebook term reaches W, which moves *every* code at once; plain VQ's gradient reaches only the selected rows, so the
rest drift out of reach and die. That is why SimVQ keeps nearly the whole codebook in use without restarts.

    loss = mse(q, sg[z]) + beta · mse(sg[q], z)      (codebook term to W; commitment to the encoder, weight beta)

State dict: `codebook` (K, d), a parameter with requires_grad=False (no optimizer holds it; it is saved so that an
exported model decodes with the same codes), and `proj.weight` (d, d), `proj.bias` (d,). Assignment and the
projection run in float32 with autocast off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .assign import code_counts, nearest_code
from .base import (Quantizer, QuantizerOutput, code_stats, flatten_channels_last, single_index_map, straight_through,
                   unflatten_channels_last)


class SimVQuantizer(Quantizer):
    """Nearest-neighbour VQ against proj(codebook); the random `codebook` is frozen, `proj` is learned."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, codebook_std: float | None = None):
        super().__init__(n_embed, embed_dim)
        self.beta = beta
        # the paper's initialisation: N(0, 1/d), so a code's norm is about 1 whatever d is
        self.codebook_std = embed_dim**-0.5 if codebook_std is None else codebook_std
        self.codebook = nn.Parameter(torch.randn(n_embed, embed_dim) * self.codebook_std, requires_grad=False)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def effective_codebook(self) -> torch.Tensor:
        """(K, d) float32 codes C·Wᵀ + b (gradient to proj only)."""
        return F.linear(self.codebook.float(), self.proj.weight.float(), self.proj.bias.float())

    def quantize_flat(self, z_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, d) float32 -> quantized (N, d) straight-through, indices (N,), loss (scalar)."""
        book = self.effective_codebook()  # (K, d)
        indices = nearest_code(z_flat, book)  # (N,)
        codes = F.embedding(indices, book)  # (N, d), gradient to proj
        loss = torch.mean((codes - z_flat.detach()) ** 2) + self.beta * torch.mean((codes.detach() - z_flat) ** 2)
        return straight_through(codes, z_flat), indices, loss

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, d, H, W) -> quantized (B, d, H, W) in z's dtype, indices (B, H, W), loss, stats."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"SimVQuantizer expects {self.embed_dim} channels, got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            q, indices, loss = self.quantize_flat(flatten_channels_last(z).float())
        quantized = unflatten_channels_last(q, b, h, w).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, code_stats(code_counts(indices, self.num_codes)))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, d, H, W) float32 rows of the effective codebook."""
        flat, b, h, w = single_index_map(indices, self.num_codes)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = F.embedding(flat, self.effective_codebook())
        return unflatten_channels_last(codes, b, h, w)

    def extra_repr(self) -> str:
        return f"n_embed={self.num_codes}, embed_dim={self.embed_dim}, beta={self.beta}, codebook_std={self.codebook_std:.4g}"
