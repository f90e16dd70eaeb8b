"""Residual vector quantization (RVQ, as in SoundStream / RQ-VAE): D levels, each quantizing what the previous left.

q_1 = Q_1(z), q_2 = Q_2(z − q_1), …; quantized = Σ_i q_i (straight-through to z as a whole); indices (B, D, H, W).
Decoding any prefix of the levels (`codes_from_indices` on (B, D', H, W)) gives a coarser reconstruction, so one
model serves several bit rates.

Inner quantizers are `VectorQuantizer` ("vq") or `EMAVectorQuantizer` ("ema"), one per level or one shared codebook.
Choices:
- loss = Σ over levels of each level's loss on its own input residual (commitment, plus the codebook term for "vq").
- Shared EMA codebook: every level assigns with the codebook as it was at the start of the step; the counts and
  onehotᵀr sums of all levels are added up and applied in ONE EMA update per step (not D updates of a moving
  codebook). Per-level EMA codebooks update after their own level, which is the same thing for independent codebooks.
- Codebook maintenance with a shared codebook runs once per step: k-means on the level-1 inputs (z), dead-code
  restarts from the usage of all levels together, with new codes drawn from all levels' inputs. With per-level
  codebooks each level maintains itself on its own inputs, and k-means runs level by level: level i collects its
  inputs only after level i−1's k-means is done (its residuals are then those of the k-means codes, not of the
  random start), so with kmeans_batches = b the last level is initialised after about D·b training forwards.
- Random-depth training (`quantize_dropout`, depth.py): a training forward may quantize only a prefix of the levels;
  indices then have that many levels.
- Overall stats use the histogram of all levels' codes over all codebook entries (K shared, D·K per level).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .assign import code_sums
from .base import (CodebookQuantizer, Quantizer, QuantizerOutput, flatten_channels_last, level_code_stats,
                   stack_index_maps, straight_through, sum_level_codes, unflatten_channels_last)
from .depth import random_prefix_depth
from .ema import EMAVectorQuantizer
from .maintenance import MaintenanceConfig
from .vq import VectorQuantizer

InnerKind = Literal["vq", "ema"]


class ResidualVectorQuantizer(Quantizer):
    """D-level residual VQ. State dict: `shared.*` (one codebook) or `levels.{i}.*` (one per level)."""

    def __init__(
        self,
        levels: int,
        n_embed: int,
        embed_dim: int,
        kind: InnerKind = "vq",
        shared_codebook: bool = False,
        beta: float = 0.25,
        legacy: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        maintenance: MaintenanceConfig | None = None,
        quantize_dropout: float = 0.0,
    ):
        super().__init__(n_embed, embed_dim)
        if levels < 1:
            raise ValueError(f"ResidualVectorQuantizer needs levels >= 1, got {levels}")
        if kind not in ("vq", "ema"):
            raise ValueError(f"unknown inner quantizer kind {kind!r}; use 'vq' or 'ema'")
        self.depth = levels
        self.kind = kind
        self.shared_codebook = shared_codebook
        # random-depth training (depth.py): probability that a training forward quantizes only a random prefix
        self.quantize_dropout = quantize_dropout
        self._step = 0
        self._draws = 0

        def make() -> CodebookQuantizer:
            if kind == "vq":
                return VectorQuantizer(n_embed, embed_dim, beta=beta, legacy=legacy, maintenance=maintenance)
            return EMAVectorQuantizer(n_embed, embed_dim, beta=beta, decay=decay, eps=eps, maintenance=maintenance)

        if shared_codebook:
            self.shared = make()
        else:
            self.levels = nn.ModuleList(make() for _ in range(levels))
            # k-means in level order: level i collects residuals only once level i-1 holds its k-means codes
            for prev, cur in zip(self.levels, self.levels[1:]):
                if prev.maintenance is not None and cur.maintenance is not None:
                    cur.maintenance.wait_for(prev.maintenance)

    def level(self, i: int) -> CodebookQuantizer:
        return self.shared if self.shared_codebook else self.levels[i]  # type: ignore[return-value]

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, C, H, W) -> quantized Σ levels (B, C, H, W) in z's dtype, indices (B, D, H, W), loss, stats."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"ResidualVectorQuantizer expects {self.embed_dim} channels, got {tuple(z.shape)}")
        depth = self.depth
        if self.training:
            self._draws += 1
            depth = random_prefix_depth(self._step, self._draws - 1, self.depth, self.quantize_dropout)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = flatten_channels_last(z).float()  # (N, C)
            if self.shared_codebook:
                self.shared.maintain_before(z_flat)
            residual = z_flat
            total = torch.zeros_like(z_flat)
            inputs, indices, counts = [], [], []
            loss = z_flat.new_zeros(())
            for i in range(depth):
                out = self.level(i).quantize_flat(residual, shared=self.shared_codebook)
                inputs.append(residual)
                indices.append(out.indices)
                counts.append(out.counts)
                loss = loss + out.loss
                total = total + out.codes.detach()  # same summation order as codes_from_indices
                residual = residual - out.codes.detach()
            if self.shared_codebook:
                self._shared_step(inputs, indices, counts)
            quantized = straight_through(total, z_flat)
        quantized = unflatten_channels_last(quantized, b, h, w).to(z.dtype)
        overall = torch.stack(counts).sum(0) if self.shared_codebook else torch.cat(counts)
        stats = level_code_stats(counts, "l", overall)
        return QuantizerOutput(quantized, stack_index_maps(indices, b, h, w), loss, stats)

    def _shared_step(self, inputs: list[torch.Tensor], indices: list[torch.Tensor], counts: list[torch.Tensor]) -> None:
        """One EMA update and one maintenance step for the shared codebook, from all levels' assignments."""
        q = self.shared
        total_counts = torch.stack(counts).sum(0)  # (K,)
        if isinstance(q, EMAVectorQuantizer) and q.training:
            sums = sum(code_sums(idx, r, self.num_codes) for idx, r in zip(indices, inputs))
            q.ema_update(total_counts, sums)
        q.maintain_after(total_counts, torch.cat(inputs))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, D', H, W) with D' <= depth (or (B, H, W) for D' = 1) -> Σ of those levels' codes (B, C, H, W)."""
        return sum_level_codes(indices, self.depth, lambda i, idx: self.level(i).lookup(idx))

    def set_step(self, step: int) -> None:
        self._step = int(step)
        self._draws = 0
        for i in range(self.depth):
            self.level(i).set_step(step)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, kind={self.kind!r}, shared_codebook={self.shared_codebook}"
