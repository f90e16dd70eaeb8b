"""Learning-rate schedules as pure functions of the step, so resume needs no scheduler state."""

from __future__ import annotations

import math
from typing import Literal


def lr_factor(
    step: int,
    schedule: Literal["constant", "exponential", "cosine"],
    *,
    total_steps: int,
    warmup_steps: int = 0,
    decay: float = 1.0,
    decay_every: int = 1,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        warm = (step + 1) / warmup_steps
    else:
        warm = 1.0
    if schedule == "constant":
        return warm
    if schedule == "exponential":
        # the user's lr_decay: multiply by `decay` once every `decay_every` steps
        return warm * decay ** (step // decay_every)
    if schedule == "cosine":
        if step < warmup_steps:
            return warm
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
