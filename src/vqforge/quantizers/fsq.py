"""Finite scalar quantization (FSQ, Mentzer et al. 2023): no codebook, every code usable by construction.

Each of the d = len(levels) latent channels is squashed into a bounded interval and rounded to one of L_i integer
values; the code is the tuple of the d rounded values, so the implicit codebook is the grid of K = Π L_i points and
the index of a code is its mixed-radix number (channel 0 is the least significant digit). There are no codebook
parameters and no auxiliary loss (QuantizerOutput.loss is 0); gradients pass through the rounding straight-through.

Bounding, per channel with L levels (the paper's formula with atanh, so that an input of 0 maps to 0):
    half = (L − 1)(1 − 1e-3)/2,  offset = 0.5 for even L else 0,  shift = atanh(offset / half) (0 for L = 2)
    bounded = tanh(z + shift)·half − offset          ∈ (−L/2, L/2 − 1) for even L, (−(L−1)/2, (L−1)/2) for odd L
    q = round(bounded) ∈ {−⌊L/2⌋, …, ⌈L/2⌉ − 1},    code = q / ⌊L/2⌋ ∈ [−1, 1],    digit = q + ⌊L/2⌋ ∈ {0, …, L−1}

When the quantizer's input has embed_dim != d channels, a learned linear map takes it to d channels first and another
maps codes back to embed_dim (`project_in`, `project_out`). All of it runs in float32 with autocast off: in bf16 the
bounded values near a rounding boundary land on the wrong side and usage collapses.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import (Quantizer, QuantizerOutput, code_stats, flatten_channels_last, single_index_map, straight_through,
                   unflatten_channels_last)

_EPS = 1e-3  # keeps the bounded range strictly inside the outermost rounding cells


class FSQuantizer(Quantizer):
    """FSQ over `levels` (e.g. [8, 8, 8, 5, 5, 5]: K = 64,000); input/output (B, embed_dim, H, W), indices (B, H, W)."""

    def __init__(self, levels: Sequence[int], embed_dim: int):
        levels = [int(v) for v in levels]
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        super().__init__(math.prod(levels), embed_dim)
        self.levels = levels
        self.dim = len(levels)
        lv = torch.tensor(levels, dtype=torch.float64)
        half = (lv - 1) * (1 - _EPS) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        # constants as float32 non-persistent buffers: they follow .to(device) and are not part of the state dict
        self.register_buffer("_half", half.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        # shift makes an input of 0 land on the code 0; with L = 2 no input reaches 0 inside (−1, 0), so 0 lands on
        # the boundary between the two codes instead (shift 0): atanh(offset / half) would be atanh(> 1) = NaN
        ratio = offset / half
        self.register_buffer("_shift", torch.where(ratio < 1, torch.atanh(ratio.clamp_max(0.5)), 0.0).float(),
                             persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        basis = [math.prod(levels[:i]) for i in range(self.dim)]
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)
        if embed_dim != self.dim:
            self.project_in = nn.Linear(embed_dim, self.dim)
            self.project_out = nn.Linear(self.dim, embed_dim)
        else:
            self.project_in = None
            self.project_out = None

    # -- the grid -----------------------------------------------------------------------------------------------
    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(N, d) float32 -> (N, d) values in each channel's open interval around its L integers."""
        return torch.tanh(z + self._shift) * self._half - self._offset

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, d) grid codes in [-1, 1] -> (N,) int64 mixed-radix indices."""
        digits = torch.round(codes * self._half_width + self._half_width).long()  # (N, d) in {0, .., L-1}
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 -> (..., d) float32 grid codes in [-1, 1]."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels  # (..., d)
        return (digits.float() - self._half_width) / self._half_width

    def quantize_flat(self, z_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, embed_dim) float32 -> quantized (N, embed_dim) (straight-through), indices (N,) int64."""
        h = self.project_in(z_flat) if self.project_in is not None else z_flat  # (N, d)
        bounded = self.bound(h)  # (N, d)
        scaled = bounded / self._half_width  # (N, d), the code range; carries the gradient
        codes = torch.round(bounded) / self._half_width  # exactly the grid values codes_from_indices makes
        indices = self.codes_to_indices(codes)
        q = straight_through(codes, scaled)  # value: codes exactly; gradient: through tanh to the input
        if self.project_out is not None:
            q = self.project_out(q)
        return q, indices

    # -- Quantizer API ------------------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, embed_dim, H, W) -> quantized (B, embed_dim, H, W) in z's dtype, indices (B, H, W), loss 0."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"FSQuantizer expects {self.embed_dim} channels, got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            q, indices = self.quantize_flat(flatten_channels_last(z).float())
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        quantized = unflatten_channels_last(q, b, h, w).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), z.new_zeros((), dtype=torch.float32), code_stats(counts))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, embed_dim, H, W) float32 (the codes, through project_out when there is one)."""
        flat, b, h, w = single_index_map(indices, self.num_codes)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = self.indices_to_codes(flat)  # (N, d)
            if self.project_out is not None:
                codes = self.project_out(codes)
        return unflatten_channels_last(codes, b, h, w)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}, embed_dim={self.embed_dim}"
