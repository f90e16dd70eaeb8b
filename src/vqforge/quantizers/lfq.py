"""Lookup-free quantization (LFQ; MAGVIT-v2, Yu et al. 2023, as trained in Open-MAGVIT2).

The latent has d = log2 K channels and each is quantized to its sign: code c ∈ {−1, +1}^d, index = the bits
(c_i > 0) read as a binary number, channel 0 the most significant bit. There is no codebook to look up or to lose
codes from; what keeps the codes in use is an entropy objective over the soft code distribution

    p(c | z) = softmax_c(−‖z − c‖² / τ) = Π_i p(c_i | z_i),   p(c_i = +1 | z_i) = sigmoid(4 z_i / τ)

    loss = beta · mse(z, sg[c])                                 commitment
         + w_sample · E_z[H(p(· | z))]                          each token confident about its code
         − w_batch  · H(E_z[p(· | z)])                          the batch spread over the whole codebook

(entropies in nats). The per-token entropy factorizes over channels (a sum of d Bernoulli entropies), but the batch
entropy does not: it needs the mean distribution over all K codes. It is computed exactly, in chunks of codes, by an
autograd function that recomputes each chunk in backward, so memory is O(tokens × chunk) whatever K is (K = 2^18 on
a GPU costs a few (tokens × K × d) matmuls per step). With `entropy_groups` G > 1 the d channels are split into G
contiguous groups and the batch term is the sum of each group's batch entropy over its own 2^(d/G) sub-codes
(Open-MAGVIT2's cheaper factorized form; exact when G = 1). Under DDP the mean distribution is summed over ranks
first, so the batch entropy is that of the global batch; its gradient is scaled by the world size because DDP
averages gradients while this term is one global value, not a per-rank mean.

The entropy terms are computed in training mode only (eval reports the commitment term), so `encode` costs a sign
and evaluation never enters a collective. With embed_dim != d a learned linear map takes the input to d channels
(`project_in`) and the codes back (`project_out`). All of it runs in float32 with autocast off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .base import (Quantizer, QuantizerOutput, code_stats, flatten_channels_last, single_index_map, straight_through,
                   unflatten_channels_last)

# elements of one (tokens, codes) probability block in the chunked batch entropy
_BLOCK_ELEMENTS = 1 << 22
_TINY = 1e-30


def code_bits(start: int, stop: int, bits: int, like: torch.Tensor) -> torch.Tensor:
    """Codes start..stop-1 of a `bits`-bit code as (stop − start, bits) 0/1 in `like`'s dtype and device, most
    significant bit first."""
    idx = torch.arange(start, stop, device=like.device)
    shifts = torch.arange(bits - 1, -1, -1, device=like.device)
    return ((idx[:, None] >> shifts) & 1).to(like.dtype)


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise; stable for large |logits|."""
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def _code_block(logits: torch.Tensor, log_norm: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """p(c | z_n) for a block of codes: (N, g), (N,), (M, g) 0/1 -> (N, M)."""
    return torch.exp(log_norm[:, None] + logits @ bits.t())


class _BatchEntropy(torch.autograd.Function):
    """H(mean over the (global) batch of p(· | z_n)) over all 2^g codes of g bits, from per-bit logits (N, g)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        n, g = logits.shape
        k = 1 << g
        log_norm = -F.softplus(logits).sum(dim=1)  # (N,): log p(c|z) = log_norm + logits · bits(c)
        rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
        sums = logits.new_empty(k + 1)  # Σ_n p(c | z_n), then N
        for start in range(0, k, rows):
            stop = min(k, start + rows)
            sums[start:stop] = _code_block(logits, log_norm, code_bits(start, stop, g, logits)).sum(dim=0)
        sums[k] = n
        distributed.all_reduce_sum(sums)
        total = sums[k].clamp_min(1.0)
        avg = sums[:k] / total  # (K,)
        ctx.save_for_backward(logits, log_norm, avg)
        ctx.total = float(total)
        ctx.rows = rows
        return -torch.special.xlogy(avg, avg).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor]:  # noqa: ANN001
        logits, log_norm, avg = ctx.saved_tensors
        n, g = logits.shape
        k = avg.numel()
        # dH/d avg_c = −(log avg_c + 1); d p(c|z_n)/d logits_n = p(c|z_n) (bits(c) − sigmoid(logits_n))
        d_avg = -(torch.log(avg.clamp_min(_TINY)) + 1.0)  # (K,)
        sig = torch.sigmoid(logits)
        grad = torch.zeros_like(logits)
        for start in range(0, k, ctx.rows):
            stop = min(k, start + ctx.rows)
            bits = code_bits(start, stop, g, logits)
            weighted = _code_block(logits, log_norm, bits) * d_avg[start:stop]  # (N, M)
            grad += weighted @ bits - sig * weighted.sum(dim=1, keepdim=True)
        # DDP averages gradients over ranks, but this is one global term: scale so the average is its gradient
        return (grad * (grad_out * distributed.world_size() / ctx.total),)


def group_slices(bits: int, groups: int) -> list[slice]:
    """Split `bits` channels into `groups` contiguous groups of (nearly) equal size."""
    base, extra = divmod(bits, groups)
    out, start = [], 0
    for i in range(groups):
        size = base + (1 if i < extra else 0)
        out.append(slice(start, start + size))
        start += size
    return out


def batch_entropy(logits: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Σ over channel groups of H(batch mean of p(group code | z)): (N, d) per-bit logits -> scalar (nats)."""
    return sum(_BatchEntropy.apply(logits[:, s].contiguous()) for s in group_slices(logits.shape[1], groups))


class LookupFreeQuantizer(Quantizer):
    """LFQ with K = n_embed = 2^d codes; input/output (B, embed_dim, H, W), indices (B, H, W)."""

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        beta: float = 0.25,
        sample_entropy_weight: float = 0.1,
        batch_entropy_weight: float = 0.1,
        temperature: float = 0.01,
        entropy_groups: int = 1,
    ):
        super().__init__(n_embed, embed_dim)
        bits = int(round(math.log2(n_embed))) if n_embed > 1 else 0
        if n_embed < 2 or 1 << bits != n_embed:
            raise ValueError(f"LFQ needs a codebook size that is a power of two, got {n_embed}")
        if not 1 <= entropy_groups <= bits:
            raise ValueError(f"LFQ entropy_groups must be in [1, {bits}] (one per bit at most), got {entropy_groups}")
        self.bits = bits
        self.beta = beta
        self.sample_entropy_weight = sample_entropy_weight
        self.batch_entropy_weight = batch_entropy_weight
        self.temperature = temperature
        self.entropy_groups = entropy_groups
        self.register_buffer("_powers", 2 ** torch.arange(bits - 1, -1, -1), persistent=False)  # (d,) MSB first
        if embed_dim != bits:
            self.project_in = nn.Linear(embed_dim, bits)
            self.project_out = nn.Linear(bits, embed_dim)
        else:
            self.project_in = None
            self.project_out = None

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 -> (..., d) float32 codes in {−1, +1}."""
        bits = (indices.unsqueeze(-1) // self._powers) % 2
        return bits.float() * 2 - 1

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) codes in {−1, +1} -> (...) int64."""
        return ((codes > 0).long() * self._powers).sum(dim=-1)

    def quantize_flat(self, z_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(N, embed_dim) float32 -> quantized (N, embed_dim) straight-through, indices (N,), loss, entropy stats."""
        h = self.project_in(z_flat) if self.project_in is not None else z_flat  # (N, d)
        codes = torch.where(h > 0, 1.0, -1.0)  # (N, d)
        indices = self.codes_to_indices(codes)
        loss = self.beta * torch.mean((h - codes) ** 2)
        extra: dict[str, torch.Tensor] = {}
        if self.training and (self.sample_entropy_weight > 0 or self.batch_entropy_weight > 0):
            logits = 4.0 * h / self.temperature  # (N, d) per-bit logits of p(c_i = +1 | z_i)
            sample = bernoulli_entropy(logits).sum(dim=1).mean()
            batch = batch_entropy(logits, self.entropy_groups)
            loss = loss + self.sample_entropy_weight * sample - self.batch_entropy_weight * batch
            extra = {"sample_entropy": sample.detach(), "batch_entropy": batch.detach()}
        q = straight_through(codes, h)
        if self.project_out is not None:
            q = self.project_out(q)
        return q, indices, loss, extra

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, embed_dim, H, W) -> quantized (B, embed_dim, H, W) in z's dtype, indices (B, H, W), loss, stats."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"LookupFreeQuantizer expects {self.embed_dim} channels, got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            q, indices, loss, extra = self.quantize_flat(flatten_channels_last(z).float())
        stats = code_stats(torch.bincount(indices, minlength=self.num_codes).float())
        stats.update(extra)
        quantized = unflatten_channels_last(q, b, h, w).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, stats)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, embed_dim, H, W) float32."""
        flat, b, h, w = single_index_map(indices, self.num_codes)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = self.indices_to_codes(flat)
            if self.project_out is not None:
                codes = self.project_out(codes)
        return unflatten_channels_last(codes, b, h, w)

    def extra_repr(self) -> str:
        return (f"n_embed={self.num_codes}, bits={self.bits}, embed_dim={self.embed_dim}, beta={self.beta}, "
                f"sample_entropy_weight={self.sample_entropy_weight}, batch_entropy_weight={self.batch_entropy_weight}, "
                f"temperature={self.temperature}, entropy_groups={self.entropy_groups}")
