"""EMA vector quantizer that stores Laplace-smoothed cluster sizes (the VQ-VAE appendix rule as the widely copied
`VectorQuantizerEMA` notebook implements it, and the user's single-level VqVae with it).

Per training forward (after the assignment, which uses the codebook from before the update):

    N ← decay·N + (1−decay)·counts;  N ← (N + eps)/(ΣN + K·eps)·ΣN        (the SMOOTHED sizes are what is stored)
    m ← decay·m + (1−decay)·onehotᵀz;  e = m / N
    loss = commitment_cost · mse(sg[e_k], z)

It differs from `EMAVectorQuantizer` (taming's EmbeddingEMA), which stores raw sizes and smooths only for the division,
and from its initialisation: here `ema_w` starts as its own N(0, 1) draw, not a copy of the codebook. Counts and sums
are summed over DDP ranks before the update. State dict: `embedding.weight` (K, C), `ema_cluster_size` (K,),
`ema_w` (K, C) — the user's key names.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from .assign import code_sums
from .base import CodebookQuantizer


class SmoothedEMAQuantizer(CodebookQuantizer):
    def __init__(self, n_embed: int, embed_dim: int, commitment_cost: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5):
        super().__init__(n_embed, embed_dim)
        self.beta = commitment_cost  # the loss is the base class's commitment term
        self.decay = decay
        self.eps = eps
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.requires_grad_(False)  # moved by the EMA, not by an optimizer
        self.register_buffer("ema_cluster_size", torch.zeros(n_embed))
        self.ema_w = nn.Parameter(torch.randn(n_embed, embed_dim), requires_grad=False)

    @property
    def commitment_cost(self) -> float:
        return self.beta

    @torch.no_grad()
    def _update_codebook(self, indices: torch.Tensor, counts: torch.Tensor, z_flat: torch.Tensor) -> None:
        if not self.training:
            return
        stats = torch.cat([counts.float()[:, None], code_sums(indices, z_flat, self.num_codes).float()], dim=1)
        distributed.all_reduce_sum(stats)  # (K, 1 + C) over ranks: every rank keeps the same codebook
        size = self.ema_cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        n = size.sum()
        size.copy_((size + self.eps) / (n + self.num_codes * self.eps) * n)
        self.ema_w.mul_(self.decay).add_(stats[:, 1:], alpha=1 - self.decay)
        self.embedding.weight.copy_(self.ema_w / size[:, None])

    def extra_repr(self) -> str:
        return (f"n_embed={self.num_codes}, embed_dim={self.embed_dim}, commitment_cost={self.commitment_cost}, "
                f"decay={self.decay}")
