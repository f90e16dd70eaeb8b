"""Exponential moving average of the tokenizer's weights (an optional, smoother copy for evaluation/export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, step: int) -> float:
    """Warm-up: min(decay, (1 + step) / (10 + step)), so early shadows follow the fast-moving weights instead of
    staying close to the random initialisation for ~1/(1 - decay) steps."""
    return min(decay, (1.0 + step) / (10.0 + step))


class WeightEMA:
    """Keeps `shadow`, a frozen copy of `model`.

    Trainable parameters follow ema <- d_t * ema + (1 - d_t) * w with the warm-up `ema_decay_at`. Everything else is
    copied, not averaged: buffers and frozen parameters are state that the model already maintains itself (an EMA
    codebook and its cluster sizes and sums, maintenance counters, BatchNorm statistics), and averaging them again would
    mix, e.g., the random and the k-means codebook for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None
        self._source: int | None = None

    def _split(self, model: nn.Module):
        """(shadow averaged, model averaged, shadow copied, model copied), cached per source model."""
        if self._pairs is None or self._source != id(model):
            mine = dict(self.shadow.named_parameters())
            mine.update(self.shadow.named_buffers())
            avg_s, avg_m, cp_s, cp_m = [], [], [], []
            for name, p in model.named_parameters():
                (avg_s if p.requires_grad else cp_s).append(mine[name])
                (avg_m if p.requires_grad else cp_m).append(p)
            for name, b in model.named_buffers():
                cp_s.append(mine[name])
                cp_m.append(b)
            self._pairs, self._source = (avg_s, avg_m, cp_s, cp_m), id(model)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, applied: torch.Tensor | None = None) -> None:
        """Fold in the weights after optimizer step `step` (0-based). `applied`: a 0-dim bool on the device, false
        when the step was skipped; then the averages stay as they are (the weight becomes 0 on the device, no host
        sync). Copied state is copied either way: a skipped step has put the model's back."""
        avg_s, avg_m, cp_s, cp_m = self._split(model)
        if avg_s:
            weight = 1.0 - ema_decay_at(self.decay, step)
            if applied is None:
                torch._foreach_lerp_(avg_s, [t.detach() for t in avg_m], weight)
            else:
                # a 0-dim tensor where torch wants a Scalar would be read to the host: the tensor-weights overload,
                # the same 0-dim weight (broadcast) for every tensor; equal bit for bit to the Scalar one
                w = torch.where(applied, weight, 0.0).to(avg_s[0].dtype)
                torch._foreach_lerp_(avg_s, [t.detach() for t in avg_m], [w] * len(avg_s))
        if cp_s:
            torch._foreach_copy_(cp_s, cp_m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(sd, strict=True)
