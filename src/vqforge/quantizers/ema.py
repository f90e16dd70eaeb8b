"""Vector quantizer with an exponential-moving-average codebook (VQ-VAE appendix; taming's EMAVectorQuantizer).

The codebook is not trained by gradients: in training mode every forward moves it towards the mean of the vectors
assigned to each code. The loss is the commitment term only. State-dict keys are taming-transformers' EMAVQ keys
(`embedding.weight`, `embedding.cluster_size`, `embedding.embed_avg`), parameters with requires_grad=False so no
optimizer ever holds them and taming checkpoints load strictly.

Initialisation is taming's (randn codes, embed_avg = a copy of them, cluster_size 0). That start is inconsistent
(embed_avg holds one "virtual vector" per code while cluster_size says zero): at the first update each used code
becomes ≈ code/((1−decay)·count) + mean, and each unused code ≈ code·decay/eps, far from all data, so it is never used
again. Training from scratch therefore uses few codes unless codebook maintenance is on (`kmeans_init` or
`restart_unused_steps`, see maintenance.py); the default stays taming's so that runs and checkpoints match it.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from .assign import code_sums
from .base import CodebookQuantizer
from .maintenance import CodeUpdate, MaintenanceConfig


class EMACodebook(nn.Module):
    """The EMA state: weight (K, C), cluster_size (K,), embed_avg (K, C)."""

    def __init__(self, num_codes: int, embed_dim: int, decay: float, eps: float):
        super().__init__()
        self.decay = decay
        self.eps = eps
        weight = torch.randn(num_codes, embed_dim)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(num_codes), requires_grad=False)
        self.embed_avg = nn.Parameter(weight.clone(), requires_grad=False)

    @torch.no_grad()
    def update(self, counts: torch.Tensor, embed_sum: torch.Tensor) -> None:
        """One EMA step from this step's code counts (K,) and onehotᵀz sums (K, C), already summed over ranks."""
        num_codes = self.weight.shape[0]
        self.cluster_size.mul_(self.decay).add_(counts.to(self.cluster_size.dtype), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(embed_sum.to(self.embed_avg.dtype), alpha=1 - self.decay)
        # Laplace smoothing keeps never-used codes from dividing by zero; n·(N_k + eps)/(n + K·eps)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + num_codes * self.eps) * n
        self.weight.copy_(self.embed_avg / smoothed.unsqueeze(1))

    @torch.no_grad()
    def write_codes(self, update: CodeUpdate) -> None:
        """Maintenance's new rows (k-means centres, restarted codes), keeping weight == embed_avg / cluster_size up to
        smoothing: a new code stands for `counts` vectors per step."""
        codes = update.codes.to(self.weight.dtype)
        size = update.counts.to(self.cluster_size.dtype).clamp_min(1.0)
        update.write(self.weight, codes)
        update.write(self.cluster_size, size)
        update.write(self.embed_avg, codes * size[:, None])

    def extra_repr(self) -> str:
        return f"num_codes={self.weight.shape[0]}, embed_dim={self.weight.shape[1]}, decay={self.decay}, eps={self.eps}"


class EMAVectorQuantizer(CodebookQuantizer):
    """Nearest-neighbour VQ whose codebook follows an EMA of the assigned encoder outputs.

    Training forward: assign codes with the current codebook, return those codes (straight-through) and
    loss = beta·mse(sg[zq], z), then update the codebook:
    cluster_size ← decay·cluster_size + (1−decay)·counts; embed_avg ← decay·embed_avg + (1−decay)·onehotᵀz;
    weight = embed_avg / smoothed cluster_size. counts and onehotᵀz are summed over DDP ranks first, so every rank
    keeps the same codebook. Eval mode never updates. Options `codebook_dim` (factorised codes) and `cosine`
    (l2-normalised codes): see CodebookQuantizer; the EMA then averages the projected, normalised vectors.
    """

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        maintenance: MaintenanceConfig | None = None,
        codebook_dim: int | None = None,
        cosine: bool = False,
    ):
        super().__init__(n_embed, embed_dim, codebook_dim=codebook_dim, cosine=cosine)
        self.beta = beta  # commitment weight (the loss is the base class's commitment term)
        self.embedding = EMACodebook(n_embed, self.code_width, decay, eps)
        self._init_maintenance(maintenance)

    def ema_update(self, counts: torch.Tensor, embed_sum: torch.Tensor) -> None:
        """Sum this process's counts (K,) and sums (K, C) over ranks (one all-reduce) and apply one EMA step."""
        stats = torch.cat([counts.detach().float()[:, None], embed_sum.detach().float()], dim=1)  # (K, 1 + C)
        distributed.all_reduce_sum(stats)
        self.embedding.update(stats[:, 0], stats[:, 1:])

    def _update_codebook(self, indices: torch.Tensor, counts: torch.Tensor, z_flat: torch.Tensor) -> None:
        if self.training:
            self.ema_update(counts, code_sums(indices, z_flat, self.num_codes))

    def _write_codes(self, update: CodeUpdate) -> None:
        self.embedding.write_codes(update)

    def extra_repr(self) -> str:
        return (f"n_embed={self.num_codes}, embed_dim={self.embed_dim}, beta={self.beta}, "
                f"codebook_dim={self.codebook_dim}, cosine={self.cosine}")
