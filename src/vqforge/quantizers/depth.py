"""Random-depth training for residual quantizers (quantizer dropout, as in SoundStream).

With probability p a training forward quantizes only a prefix of depth d ~ U{1..D}, so the decoder learns to decode
every prefix and one model serves D bit rates. The draw is a pure function of (global step, forward count within
the step): every DDP rank draws the same depth without communicating, and a resumed run draws exactly what the
uninterrupted one did (the step is part of the training state; nothing else needs saving).
"""

from __future__ import annotations

import torch

_SALT = 0x5EED_D0  # keeps this stream apart from other step-seeded streams


def random_prefix_depth(step: int, draw: int, depth: int, p: float) -> int:
    """Depth for the `draw`-th training forward of `step`: `depth`, or with probability p a uniform 1..depth."""
    if p <= 0.0 or depth <= 1:
        return depth
    g = torch.Generator().manual_seed(_SALT + 7919 * int(step) + int(draw))
    drop = float(torch.rand((), generator=g)) < p
    d = int(torch.randint(1, depth + 1, (), generator=g))
    return d if drop else depth
