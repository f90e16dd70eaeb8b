"""Product quantization with EMA codebooks (the user's PQ-GAN `PQEMAVectorQuantizer`).

The C channels of every latent vector are split into S contiguous subspaces of C/S channels (subspace s holds
channels [s·C/S, (s+1)·C/S)); each subspace has its own EMA codebook of K codes and is quantized independently:

    z (N, C) -> z_s (N, C/S) -> k_s = argmin ||z_s − e^s_k|| -> quantized = concat_s e^s_{k_s}     indices (B, S, H, W)
    loss = beta · mse(sg[quantized], z)     (one commitment term over the whole vector)

A position costs S·log2 K bits (S indices from S independent K-code books): K^S combinations from S·K stored codes.
Each codebook follows its own EMA update (the VQ-VAE appendix rule with Laplace smoothing), from this step's counts
and sums summed over DDP ranks first (one all-reduce for all subspaces).

State dict: `codebooks.{s}.weight` (K, C/S), `codebooks.{s}.cluster_size` (K,), `codebooks.{s}.embed_avg` (K, C/S),
the user's key names, so their PQ-GAN checkpoints load strictly.

Options (off by default, vqforge's, as for the EMA quantizer; maintenance.py): k-means initialisation
(`kmeans_init`, `kmeans_iters`, `kmeans_batches`) and dead-code restarts (`restart_unused_steps`), each run per
subspace: subspace s's codebook is initialised by k-means on the first batches' z_s, and its codes unused (over all
ranks) for that many training forwards get random z_s rows of the step. Their state is `maintenance.{s}.kmeans_done`
and `maintenance.{s}.steps_unused`, present only when the option is on (so the user's checkpoints still load).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed
from .assign import code_counts, code_sums, nearest_code
from .base import (Quantizer, QuantizerOutput, flatten_channels_last, level_code_stats, stack_index_maps,
                   straight_through, unflatten_channels_last)
from .ema import EMACodebook
from .maintenance import CodebookMaintenance, CodeUpdate, MaintenanceConfig


class ProductEMAQuantizer(Quantizer):
    """S subspaces × one EMA codebook of K codes each; indices (B, S, H, W)."""

    def __init__(self, n_embed: int, embed_dim: int, num_subspaces: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, maintenance: MaintenanceConfig | None = None):
        if num_subspaces < 1 or embed_dim % num_subspaces:
            raise ValueError(f"embed_dim {embed_dim} must be a positive multiple of num_subspaces {num_subspaces}")
        super().__init__(n_embed, embed_dim)
        self.num_subspaces = num_subspaces
        self.sub_dim = embed_dim // num_subspaces
        self.beta = beta
        self.codebooks = nn.ModuleList(EMACodebook(n_embed, self.sub_dim, decay, eps) for _ in range(num_subspaces))
        self.maintenance: nn.ModuleList | None
        if maintenance is not None and maintenance.enabled:
            self.maintenance = nn.ModuleList(CodebookMaintenance(n_embed, maintenance) for _ in range(num_subspaces))
        else:
            self.maintenance = None  # a plain attribute: no state-dict keys, the user's checkpoints load strictly

    def in_place_parameters(self) -> list[torch.Tensor]:
        """Parameters a training forward overwrites besides the EMA step (k-means, restarts)."""
        return [book.weight for book in self.codebooks] if self.maintenance is not None else []

    def _write_codes(self, s: int, update: CodeUpdate) -> None:
        self.codebooks[s].write_codes(update)  # subspace s's EMA codebook

    @property
    def bits_per_token(self) -> float:
        """Bits of one spatial position at a fixed-length code: S · log2 K."""
        return self.num_subspaces * math.log2(self.num_codes)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, C, H, W) -> quantized (B, C, H, W) in z's dtype, indices (B, S, H, W), loss, stats."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"ProductEMAQuantizer expects {self.embed_dim} channels, got {tuple(z.shape)}")
        s_count, k = self.num_subspaces, self.num_codes
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = flatten_channels_last(z).float()  # (N, C)
            z_sub = z_flat.view(-1, s_count, self.sub_dim)  # (N, S, C/S): contiguous channel blocks
            maintain = self.maintenance is not None and self.training
            if maintain:
                for s, m in enumerate(self.maintenance):
                    update = m.kmeans_step(z_sub[:, s])
                    if update is not None:
                        self._write_codes(s, update)
            indices, codes, counts = [], [], []
            for s, book in enumerate(self.codebooks):
                idx = nearest_code(z_sub[:, s], book.weight)  # (N,)
                indices.append(idx)
                codes.append(torch.nn.functional.embedding(idx, book.weight).float())  # (N, C/S)
                counts.append(code_counts(idx, k))
            q_flat = torch.cat(codes, dim=1)  # (N, C)
            if self.training:
                self._ema_update(z_sub, indices, counts)
            if maintain:
                for s, m in enumerate(self.maintenance):
                    update = m.restart_step(counts[s], z_sub[:, s])
                    if update is not None:
                        self._write_codes(s, update)
            loss = self.beta * torch.mean((q_flat.detach() - z_flat) ** 2)
            quantized = straight_through(q_flat, z_flat)
        quantized = unflatten_channels_last(quantized, b, h, w).to(z.dtype)
        stats = level_code_stats(counts, "s", torch.cat(counts))  # overall usage: over all S·K stored codes
        return QuantizerOutput(quantized, stack_index_maps(indices, b, h, w), loss, stats)  # indices (B, S, H, W)

    @torch.no_grad()
    def _ema_update(self, z_sub: torch.Tensor, indices: list[torch.Tensor], counts: list[torch.Tensor]) -> None:
        # (S, K, 1 + C/S): counts and onehotᵀz of every subspace, summed over ranks in one all-reduce
        stats = torch.stack([
            torch.cat([cnt.float()[:, None], code_sums(idx, z_sub[:, s], self.num_codes).float()], dim=1)
            for s, (idx, cnt) in enumerate(zip(indices, counts))
        ])
        distributed.all_reduce_sum(stats)
        for s, book in enumerate(self.codebooks):
            book.update(stats[s, :, 0], stats[s, :, 1:])

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, S, H, W) -> (B, C, H, W): subspace s's code fills channels [s·C/S, (s+1)·C/S)."""
        if indices.dim() != 4 or indices.shape[1] != self.num_subspaces:
            raise ValueError(f"expected indices (B, {self.num_subspaces}, H, W) (one per subspace), "
                             f"got {tuple(indices.shape)}")
        b, _, h, w = indices.shape
        parts = [torch.nn.functional.embedding(indices[:, s].reshape(-1), book.weight).float()
                 for s, book in enumerate(self.codebooks)]
        return unflatten_channels_last(torch.cat(parts, dim=1), b, h, w)

    def extra_repr(self) -> str:
        return (f"num_subspaces={self.num_subspaces}, n_embed={self.num_codes}, embed_dim={self.embed_dim}, "
                f"beta={self.beta}")
