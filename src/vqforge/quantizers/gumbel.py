"""Gumbel-softmax quantizer (as taming-transformers' GumbelQuantize, DALL-E's dVAE bottleneck).

A 1x1 conv maps the encoder output to K logits per position; training samples a (hard, straight-through) one-hot with
the Gumbel-softmax at the scheduled temperature and mixes codebook rows with it; a KL term pulls the code
distribution towards uniform. State-dict keys are taming's: `proj.weight`, `proj.bias`, `embed.weight`.

Eval mode is deterministic: the code is argmax(logits), without Gumbel noise, and quantized = embed[argmax]. (taming
samples noise in eval too, so its validation outputs change from call to call; vqforge wants `encode` to be a
function and eval `quantized == codes_from_indices(indices)`.)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer, QuantizerOutput, code_stats, single_index_map, unflatten_channels_last

Schedule = Literal["cosine", "linear", "exponential"]


def temperature_at(step: int, start: float, end: float, anneal_steps: int, schedule: Schedule) -> float:
    """Temperature at `step`: `start` at step 0, `end` from `anneal_steps` on; anneal_steps 0 = constant `start`."""
    if anneal_steps <= 0:
        return start
    t = min(max(step, 0) / anneal_steps, 1.0)
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return start + (end - start) * t
    if schedule == "exponential":
        return start * (end / start) ** t
    raise ValueError(f"unknown temperature schedule {schedule!r}; use 'cosine', 'linear' or 'exponential'")


class GumbelQuantizer(Quantizer):
    """Gumbel-softmax VQ: logits = proj(z) (1x1 conv, in_channels -> K), codes from `embed` (K, embed_dim).

    loss = kl_weight · mean over positions of Σ_k q_k·log(q_k·K + 1e-10), q = softmax(logits) (KL to uniform).
    `set_step(step)` sets the temperature from the schedule; the current value is in stats["temperature"].
    """

    def __init__(
        self,
        in_channels: int,
        n_embed: int,
        embed_dim: int,
        kl_weight: float = 5e-4,
        straight_through: bool = True,
        temperature_start: float = 1.0,
        temperature_end: float = 0.0625,
        temperature_anneal_steps: int = 0,
        temperature_schedule: Schedule = "cosine",
    ):
        super().__init__(n_embed, embed_dim)
        self.in_channels = in_channels
        self.kl_weight = kl_weight
        self.straight_through = straight_through
        self.temperature_start = temperature_start
        self.temperature_end = temperature_end
        self.temperature_anneal_steps = temperature_anneal_steps
        self.temperature_schedule: Schedule = temperature_schedule
        self.temperature = temperature_start
        self.proj = nn.Conv2d(in_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)
        # the temperature as a device tensor for the stats, refreshed by set_step, not copied host->device each forward
        self.register_buffer("_temperature_stat", torch.tensor(float(temperature_start)), persistent=False)

    def set_step(self, step: int) -> None:
        self.temperature = temperature_at(step, self.temperature_start, self.temperature_end,
                                          self.temperature_anneal_steps, self.temperature_schedule)
        self._temperature_stat.fill_(self.temperature)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, in_channels, H, W) -> quantized (B, embed_dim, H, W) in z's dtype, indices (B, H, W)."""
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"GumbelQuantizer expects (B, {self.in_channels}, H, W), got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            logits = F.conv2d(z.float(), self.proj.weight.float(), self.proj.bias.float())  # (B, K, H, W)
            if self.training:
                one_hot = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=self.straight_through)
                quantized = torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight.float())  # (B, D, H, W)
                indices = one_hot.argmax(dim=1)  # (B, H, W)
            else:
                indices = logits.argmax(dim=1)
                quantized = self.codes_from_indices(indices)
            q = F.softmax(logits, dim=1)
            loss = self.kl_weight * torch.sum(q * torch.log(q * self.num_codes + 1e-10), dim=1).mean()
        counts = torch.bincount(indices.reshape(-1), minlength=self.num_codes).float()
        stats = code_stats(counts)
        stats["temperature"] = self._temperature_stat.clone()  # a copy: a later set_step must not change logged values
        return QuantizerOutput(quantized.to(z.dtype), indices, loss, stats)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, embed_dim, H, W) float32."""
        flat, b, h, w = single_index_map(indices, self.num_codes)
        return unflatten_channels_last(F.embedding(flat, self.embed.weight).float(), b, h, w)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, n_embed={self.num_codes}, embed_dim={self.embed_dim}, "
                f"kl_weight={self.kl_weight}, straight_through={self.straight_through}")
