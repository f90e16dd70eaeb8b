"""Small, real entropy models for the codec tests (registered under test-only names).

- "test-uniform": every token costs log2 K bits; one step per frame.
- "test-context": a few-pass model: per depth, a checkerboard in two steps; a token's logits come from learned
  embeddings of the previous frame's token at the same place, the mean of its already revealed 4-neighbours at the
  same depth, and the token one depth up. Its parameters can be fitted to data in a few hundred Adam steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqforge.entropy import EntropyModel, FrameLayout, register_entropy_model, registered_entropy_models


def _register(name):
    def deco(cls):
        if name in registered_entropy_models():  # imported twice (e.g. as a test module and by a subprocess)
            return cls
        return register_entropy_model(name)(cls)
    return deco


@_register("test-uniform")
class UniformModel(EntropyModel):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def schedule(self, layout: FrameLayout) -> list[torch.Tensor]:
        return [torch.arange(layout.numel)]

    def step_logits(self, tokens, known, prev, layout, step):
        return torch.zeros(layout.numel, layout.vocab_size)

    def model_config(self):
        return {"vocab_size": self.vocab_size}


@_register("test-context")
class ContextModel(EntropyModel):
    def __init__(self, vocab_size: int, dim: int = 16, max_depth: int = 4):
        super().__init__()
        self.vocab_size, self.dim, self.max_depth = vocab_size, dim, max_depth
        k = vocab_size
        self.prev_emb = nn.Embedding(k + 1, dim)  # index k: no previous frame
        self.nb_emb = nn.Embedding(k, dim)
        self.up_emb = nn.Embedding(k + 1, dim)  # index k: depth 0 (nothing above)
        self.depth_emb = nn.Embedding(max_depth, dim)
        self.none_nb = nn.Parameter(torch.zeros(dim))
        self.out = nn.Linear(dim, k)

    def schedule(self, layout: FrameLayout) -> list[torch.Tensor]:
        d, h, w = layout.depth, layout.height, layout.width
        if d > self.max_depth:
            raise ValueError(f"test-context codes at most {self.max_depth} depths")
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        black = ((ii + jj) % 2 == 0).reshape(-1)
        base = torch.arange(h * w)
        steps = []
        for z in range(d):
            steps.append(z * h * w + base[black])
            steps.append(z * h * w + base[~black])
        return steps

    def features(self, tokens, known, prev, layout, pos):
        d, h, w = layout.depth, layout.height, layout.width
        k = self.vocab_size
        z, r = pos // (h * w), pos % (h * w)
        i, j = r // w, r % w
        prev_tok = (torch.full_like(pos, k) if prev is None else prev.reshape(-1)[pos])
        # mean embedding of known 4-neighbours at the same depth
        acc = torch.zeros(len(pos), self.dim)
        cnt = torch.zeros(len(pos), 1)
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ni, nj = i + di, j + dj
            ok = (ni >= 0) & (ni < h) & (nj >= 0) & (nj < w)
            npos = z * h * w + ni.clamp(0, h - 1) * w + nj.clamp(0, w - 1)
            ok = ok & known.reshape(-1)[npos]
            e = self.nb_emb(tokens.reshape(-1)[npos]) * ok[:, None]
            acc = acc + e
            cnt = cnt + ok[:, None].float()
        nb = torch.where(cnt > 0, acc / cnt.clamp(min=1), self.none_nb.expand(len(pos), -1))
        up_pos = (z - 1).clamp(min=0) * h * w + r
        up_tok = torch.where(z > 0, tokens.reshape(-1)[up_pos], torch.full_like(pos, k))
        return self.prev_emb(prev_tok) + nb + self.up_emb(up_tok) + self.depth_emb(z)

    def step_logits(self, tokens, known, prev, layout, step):
        pos = self.schedule(layout)[step]
        return self.out(torch.tanh(self.features(tokens, known, prev, layout, pos)))

    def model_config(self):
        return {"vocab_size": self.vocab_size, "dim": self.dim, "max_depth": self.max_depth}


def fit(model: EntropyModel, frames: torch.Tensor, steps: int = 200, lr: float = 3e-2, video: bool = True) -> float:
    """Fit on (T, D, H, W) tokens with teacher forcing (frame_logits); returns the final bits per token."""
    t, d, h, w = frames.shape
    layout = FrameLayout(d, h, w, model.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bits = float("nan")
    for _ in range(steps):
        loss = 0.0
        for f in range(t):
            prev = frames[f - 1] if (video and f > 0) else None
            logits = model.frame_logits(frames[f], prev, layout)
            loss = loss + F.cross_entropy(logits, frames[f].reshape(-1), reduction="sum")
        loss = loss / frames.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bits = float(loss.detach()) / math.log(2)
    model.eval()
    return bits
