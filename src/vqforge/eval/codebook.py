"""Codebook usage over a whole evaluated set, perplexity, dead codes and bits per pixel.

Index layouts (what models return as `indices`):
- single quantizer: one tensor (B, h, w)                      -> one level
- residual VQ of depth D: one tensor (B, D, h, w)             -> D levels (level d = residual depth d)
- hierarchical (VQ-VAE-2): a list of tensors (B, h_l, w_l)    -> one level per map (coarsest first, as the model returns)

Usage is a histogram of code counts per level, accumulated over every evaluated image (not a rolling window) and
summed across processes. Bits per pixel use the uniform code length, log2(K) bits per token:
`bpp = sum over levels of tokens_per_image * log2(K) / (H * W)`; for residual VQ also per depth prefix 1..D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..distributed import all_reduce_sum
from ..quantizers.base import usage_and_perplexity

Indices = torch.Tensor | Sequence[torch.Tensor]
Layout = Literal["single", "residual", "hierarchical"]


def index_layout(indices: Indices) -> Layout:
    if isinstance(indices, torch.Tensor):
        if indices.ndim == 3:
            return "single"
        if indices.ndim == 4:
            return "residual"
        raise ValueError(f"indices must be (B, h, w) or (B, D, h, w), got shape {tuple(indices.shape)}")
    return "hierarchical"


def split_levels(indices: Indices) -> list[torch.Tensor]:
    """Any layout -> one (B, h, w) map per level."""
    layout = index_layout(indices)
    if layout == "single":
        return [indices]  # type: ignore[list-item]
    if layout == "residual":
        return list(indices.unbind(dim=1))  # type: ignore[union-attr]
    maps = list(indices)
    for m in maps:
        if m.ndim != 3:
            raise ValueError(f"each level's indices must be (B, h, w), got shape {tuple(m.shape)}")
    return maps


def tokens_per_image(indices: Indices) -> list[int]:
    """Tokens one image costs at each level: h_l * w_l."""
    return [int(m.shape[1] * m.shape[2]) for m in split_levels(indices)]


def bits_per_pixel(tokens: Sequence[int], num_codes: Sequence[int], height: int, width: int) -> float:
    """Uniform-code-length rate: sum_l tokens_l * log2(K_l) / (H * W)."""
    if len(tokens) != len(num_codes):
        raise ValueError(f"{len(tokens)} levels of tokens but {len(num_codes)} codebook sizes")
    return sum(t * math.log2(k) for t, k in zip(tokens, num_codes)) / (height * width)


def bits_per_pixel_by_depth(tokens: Sequence[int], num_codes: Sequence[int], height: int, width: int) -> list[float]:
    """Residual VQ: bpp when only the first d levels are kept, for d = 1..D."""
    return [bits_per_pixel(tokens[:d], num_codes[:d], height, width) for d in range(1, len(tokens) + 1)]


@dataclass
class LevelStats:
    level: int
    num_codes: int  # K
    used: int  # codes that occurred at least once
    dead: int  # K - used
    usage: float  # used / K
    perplexity: float  # exp(entropy of the code distribution); K for perfectly uniform use
    entropy_bits: float  # empirical entropy in bits per token (<= log2 K)
    tokens: int  # tokens counted


def level_stats(counts: torch.Tensor, level: int = 0) -> LevelStats:
    """Statistics of one level from its (K,) histogram of code counts."""
    c = counts.to(torch.float64)
    k = int(c.numel())
    used = int((c > 0).sum())
    _, perplexity = usage_and_perplexity(c)  # float64: exact for any realistic token count
    h = math.log(float(perplexity))  # nats
    return LevelStats(level=level, num_codes=k, used=used, dead=k - used, usage=used / k, perplexity=float(perplexity),
                      entropy_bits=h / math.log(2), tokens=int(c.sum()))


class CodebookUsage:
    """Histogram of code counts per level, accumulated over batches and summed across processes."""

    def __init__(self, num_codes: Sequence[int] | int, levels: int | None = None, device: str | torch.device = "cpu"):
        """num_codes: K per level, or one K for all levels. levels: allocate the histograms now (every process
        must hold the same tensors before a reduction, even one that saw no batch); else at the first update."""
        self.num_codes = [num_codes] if isinstance(num_codes, int) else list(num_codes)
        self.device = torch.device(device)
        self.counts: list[torch.Tensor] | None = None  # per level (K_l,) int64
        self.layout: Layout | None = None
        self.tokens: list[int] | None = None  # tokens per image per level
        if levels is not None:
            self._allocate(levels)

    def _allocate(self, levels: int) -> None:
        ks = self.num_codes
        if len(ks) == 1 and levels > 1:
            ks = ks * levels  # one size for every level
        if len(ks) != levels:
            raise ValueError(f"indices have {levels} levels but {len(ks)} codebook sizes were given")
        self.num_codes = ks
        self.counts = [torch.zeros(k, dtype=torch.int64, device=self.device) for k in ks]

    def update(self, indices: Indices) -> None:
        levels = split_levels(indices)
        if self.counts is None:
            self._allocate(len(levels))
        if self.layout is None:
            self.layout = index_layout(indices)
            self.tokens = [int(m.shape[1] * m.shape[2]) for m in levels]
        assert self.counts is not None
        if len(levels) != len(self.counts):
            raise ValueError(f"indices have {len(levels)} levels, earlier batches had {len(self.counts)}")
        for lvl, (m, counts) in enumerate(zip(levels, self.counts)):
            flat = m.reshape(-1).to(device=self.device, dtype=torch.int64)
            k = counts.numel()
            if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= k):
                raise ValueError(f"level {lvl}: index outside [0, {k}) (min {int(flat.min())}, max {int(flat.max())})")
            counts += torch.bincount(flat, minlength=k)

    def all_reduce(self) -> None:
        """Sum the histograms over processes (all ranks must have seen the same layout)."""
        for c in self.counts or []:
            all_reduce_sum(c)

    def stats(self) -> list[LevelStats]:
        return [level_stats(c, i) for i, c in enumerate(self.counts or [])]

    def total_stats(self, shared: bool) -> LevelStats | None:
        """All levels together (None for one level): with `shared` (one codebook used at every level) the levels'
        counts are summed into its K codes, so a code is dead only if no level uses it; otherwise each level's K codes
        are counted separately (D*K codes). `level` is -1."""
        if not self.counts or len(self.counts) < 2:
            return None
        if shared:
            if len({c.numel() for c in self.counts}) != 1:
                raise ValueError("a shared codebook has one size, but the levels' histograms differ in length")
            return level_stats(torch.stack(self.counts).sum(0), -1)
        return level_stats(torch.cat(self.counts), -1)
