"""Residual VQ with ONE shared EMA codebook and a prefix loss — the layout of the user's RVQ-VQGAN checkpoints.

For depth D and input z (one vector per position):

    r_0 = z;  k_d = argmin_k ||r_{d-1} − e_k||;  q_d = e_{k_d};  r_d = r_{d-1} − q_d;  prefix_d = q_1 + … + q_d
    quantized = prefix_D (straight-through to z);  indices (B, D, H, W)
    loss = beta · Σ_d mse(sg[prefix_d], z)          (every prefix is pulled towards z, not each level to its residual)

The codebook is updated once per forward from the assignments of every depth pooled together:
cluster_size ← decay·cluster_size + (1−decay)·Σ_d counts_d, embed_avg ← decay·embed_avg + (1−decay)·Σ_d onehot_dᵀ r_{d−1},
weight = embed_avg / Laplace-smoothed cluster_size; all depths assign with the codebook as it was at the start of the
step. The pooled statistics are summed over DDP ranks first (the user's system did not, so its ranks drifted apart).

State dict: `embedding.weight` (K, C), `embedding.cluster_size` (K,), `embedding.embed_avg` (K, C) — the names of the
user's `ResidualEMAVectorQuantizer`, so a checkpoint of theirs loads strictly and `vqforge export --format user`
writes one back. (vqforge's `ResidualVectorQuantizer` with `shared_codebook: true` differs: per-level loss
Σ_d beta·mse(sg[q_d], r_{d−1}) and keys under `shared.`.)

vqforge options on top (all off by default, so the default is the user's algorithm exactly):
- codebook maintenance (`kmeans_init`, `restart_unused_steps`): k-means on z before the first steps; dead-code
  restarts from the usage of all depths, new codes drawn from all depths' residuals. Adds `maintenance.*` keys.
- random-depth training (`quantize_dropout` = p): with probability p a training forward quantizes only a prefix of
  depth d ~ U{1..D} (the decoder then learns to decode every prefix, so one model serves D bit rates). The draw is a
  function of (global step, forward count within the step) only — the same on every DDP rank, and reproduced exactly
  after a resume because the step is part of the training state. Eval always uses the full depth.
"""

from __future__ import annotations

from typing import Any

import torch

from .assign import code_counts, code_sums, nearest_code
from .base import (QuantizerOutput, flatten_channels_last, level_code_stats, stack_index_maps, straight_through,
                   sum_level_codes, unflatten_channels_last)
from .depth import random_prefix_depth
from .ema import EMAVectorQuantizer

class ResidualEMAVectorQuantizer(EMAVectorQuantizer):
    """D-depth residual VQ over one shared EMA codebook; the user's RVQ-VQGAN quantizer plus vqforge options."""

    def __init__(self, levels: int, n_embed: int, embed_dim: int, *, quantize_dropout: float = 0.0,
                 **codebook_options: Any):
        """`codebook_options` are the shared codebook's: beta, decay, eps, maintenance (EMAVectorQuantizer)."""
        super().__init__(n_embed, embed_dim, **codebook_options)
        if levels < 1:
            raise ValueError(f"ResidualEMAVectorQuantizer needs levels >= 1, got {levels}")
        if not 0.0 <= quantize_dropout <= 1.0:
            raise ValueError(f"quantize_dropout is a probability in [0, 1], got {quantize_dropout}")
        self.depth = levels
        self.quantize_dropout = quantize_dropout
        self._step = 0
        self._draws = 0  # training forwards since the last set_step (gradient accumulation)

    def set_step(self, step: int) -> None:
        self._step = int(step)
        self._draws = 0

    def training_depth(self) -> int:
        """Depth this forward quantizes: D, or with quantize dropout a random prefix depth (see depth.py)."""
        if not self.training:
            return self.depth
        self._draws += 1
        return random_prefix_depth(self._step, self._draws - 1, self.depth, self.quantize_dropout)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, C, H, W) -> quantized prefix sum (B, C, H, W) in z's dtype, indices (B, D', H, W), loss, stats.

        D' = depth, except in training with quantize dropout (then the drawn prefix depth)."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"ResidualEMAVectorQuantizer expects {self.embed_dim} channels, got {tuple(z.shape)}")
        depth = self.training_depth()
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = flatten_channels_last(z).float()  # (N, C)
            self.maintain_before(z_flat)
            residual = z_flat
            prefix = torch.zeros_like(z_flat)
            inputs, indices, counts = [], [], []
            loss = z_flat.new_zeros(())
            for _ in range(depth):
                idx = nearest_code(residual, self.codebook)  # (N,), against the codebook at the start of the step
                codes = self.lookup(idx).detach()  # (N, C)
                prefix = prefix + codes  # same summation order as codes_from_indices
                loss = loss + torch.mean((prefix - z_flat) ** 2)  # mse(sg[prefix_d], z)
                inputs.append(residual)
                indices.append(idx)
                counts.append(code_counts(idx, self.num_codes))
                residual = residual - codes
            loss = self.beta * loss
            total_counts = torch.stack(counts).sum(0)  # (K,) pooled over depths
            if self.training:
                sums = code_sums(torch.cat(indices), torch.cat(inputs), self.num_codes)  # (K, C)
                self.ema_update(total_counts, sums)
            self.maintain_after(total_counts, torch.cat(inputs))
            quantized = straight_through(prefix, z_flat)
        quantized = unflatten_channels_last(quantized, b, h, w).to(z.dtype)
        stats = level_code_stats(counts, "l", total_counts)
        stats["depth"] = torch.tensor(float(depth))
        return QuantizerOutput(quantized, stack_index_maps(indices, b, h, w), loss, stats)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, D', H, W) with 1 <= D' <= depth (or (B, H, W) for D' = 1) -> Σ of those depths' codes (B, C, H, W),
        bit for bit the eval forward's output (see sum_level_codes)."""
        return sum_level_codes(indices, self.depth, lambda _, idx: self.lookup(idx))

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, n_embed={self.num_codes}, embed_dim={self.embed_dim}, beta={self.beta}, "
                f"quantize_dropout={self.quantize_dropout}")
