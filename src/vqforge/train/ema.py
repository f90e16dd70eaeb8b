"""Exponential moving average of the tokenizer's weights (an optional, smoother copy for evaluation/export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """Keeps `shadow`, a frozen copy of `model`; float tensors follow ema ← d·ema + (1−d)·w, the rest is copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = model.state_dict()
        for name, t in self.shadow.state_dict().items():
            s = src[name]
            if t.dtype.is_floating_point:
                t.lerp_(s.to(t.dtype), 1.0 - self.decay)
            else:
                t.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(sd, strict=True)
