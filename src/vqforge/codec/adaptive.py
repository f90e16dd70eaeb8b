"""Clip-adaptive mixing: the entropy model's prediction mixed with the statistics of the segment coded so far.

A trained entropy model predicts tokens the way its training clips used them. The tokens of a clip it never saw
follow their own distribution: a few hundred codes, used over and over, each near where it was a frame earlier. The
model cannot learn that from training data, but the coder can count it as it goes. With adaptive mixing on
(container flag bit 1, the default of `compress_tokens`), each token is coded with

    p(x) = w[d, 0] · p_model(x) + w[d, 1] · p_seg(x) + w[d, 2] · p_near(x) + w[d, 3] · p_up(x)

where d is the token's residual depth and, counting only tokens already coded in this segment (the decoder knows
exactly these, so both sides compute the same numbers):

- p_seg:  the segment's unigram at depth d, (n_d(x) + 1/2) / (n_d + K/2);
- p_near: a histogram of the depth-d tokens in the (2r+1) x (2r+1) window around the position, in the previous
  frame (the co-located token counted `center_weight` times) and among this frame's already revealed tokens,
  smoothed toward p_seg: (h(x) + s · p_seg(x)) / (sum h + s);
- p_up:   residual VQ (D > 1, K <= 1024): how often each code followed the code one depth up at the same position in
  this segment, (n_d(u, x) + s · p_seg(x)) / (n_d(u) + s) with u the token at depth d - 1 (p_seg at depth 0, when
  that token is not yet revealed, or for larger K, where the D·K·K counts would not fit);
- w[d]: per depth, the mixture weights that best explain the segment's tokens so far (online EM: after each coding
  step every expert is credited with its posterior responsibility for each token; credits decay by `decay` per
  step so the weights follow the clip), starting from `prior` and never below `floor`.

Everything is float64 numpy in a fixed order, then quantized by `frequencies.probs_to_weights` like the model's own
probabilities. The state starts afresh at every segment, so any intra point still decodes alone.

The parameters are part of the format: a file with flag bit 1 is decoded with exactly `ADAPTIVE_V1`. A different
set would need another flag (or container version), never a silent change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..entropy.base import FrameLayout


@dataclass(frozen=True)
class AdaptiveParams:
    radius: int = 2  # window (2r+1)^2 around the position, same depth
    center_weight: float = 4.0  # the previous frame's co-located token counts this many times
    near_smoothing: float = 2.0  # s: pseudo-count of p_seg inside p_near
    unigram_prior: float = 0.5  # pseudo-count of every code in p_seg
    prior: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)  # starting weights (model, segment unigram, window, depth-up)
    prior_strength: float = 8.0  # the starting weights count as this many tokens
    decay: float = 0.98  # per coding step, on each depth's credits
    floor: float = 1e-3  # no expert's weight goes below this
    max_pair_vocab: int = 1024  # p_up only up to this K


ADAPTIVE_V1 = AdaptiveParams()


def window_table(layout: FrameLayout, radius: int) -> tuple[np.ndarray, int]:
    """(numel, (2r+1)^2) int64 flat positions of each position's same-depth window (-1 outside the frame), and the
    column of the window's centre."""
    d, h, w = layout.depth, layout.height, layout.width
    offs = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    dd, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    dd, yy, xx = dd.reshape(-1), yy.reshape(-1), xx.reshape(-1)
    table = np.full((layout.numel, len(offs)), -1, dtype=np.int64)
    for j, (dy, dx) in enumerate(offs):
        y, x = yy + dy, xx + dx
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        table[ok, j] = (dd[ok] * h + y[ok]) * w + x[ok]
    return table, offs.index((0, 0))


class AdaptiveMixer:
    """The mixing state of one segment. Per frame: `start_frame(prev)`; per coding step: `mix` then `update`."""

    def __init__(self, layout: FrameLayout, params: AdaptiveParams = ADAPTIVE_V1):
        self.layout = layout
        self.params = params
        k, d = layout.vocab_size, layout.depth
        self.counts = np.zeros((d, k), dtype=np.float64)
        self.credit = np.tile(np.asarray(params.prior, dtype=np.float64) * params.prior_strength, (d, 1))
        self.window, self.center = window_table(layout, params.radius)
        self.pairs = np.zeros((d, k, k)) if d > 1 and k <= params.max_pair_vocab else None
        self.prev: np.ndarray | None = None
        self._pending: tuple | None = None

    def start_frame(self, prev: np.ndarray | None) -> None:
        """prev: the previous frame's tokens (D, H, W) (None at the segment's intra frame)."""
        self.prev = None if prev is None else np.ascontiguousarray(prev, dtype=np.int64).reshape(-1)

    def _weights(self) -> np.ndarray:
        w = self.credit / self.credit.sum(axis=1, keepdims=True)
        w = np.maximum(w, self.params.floor)
        return w / w.sum(axis=1, keepdims=True)

    def _segment_unigram(self) -> np.ndarray:
        k = self.layout.vocab_size
        a = self.params.unigram_prior
        return (self.counts + a) / (self.counts.sum(axis=1, keepdims=True) + a * k)  # (D, K)

    def mix(self, p_model: np.ndarray, pos: np.ndarray, tokens: np.ndarray, known: np.ndarray) -> np.ndarray:
        """p_model (n, K) float64 for the step's flat positions `pos`; tokens/known: this frame so far (flat).
        Returns the mixed (n, K) float64 probabilities (rows sum to 1)."""
        prm = self.params
        n, k = p_model.shape
        depth = pos // (self.layout.height * self.layout.width)
        p_seg = self._segment_unigram()[depth]  # (n, K)
        nb = self.window[pos]  # (n, M)
        valid = nb >= 0
        safe = np.where(valid, nb, 0)
        rows = np.broadcast_to(np.arange(n)[:, None], nb.shape)
        cur = valid & known[safe]
        idx = [rows[cur] * k + tokens[safe][cur]]
        wts = [np.ones(int(cur.sum()), dtype=np.float64)]
        if self.prev is not None:
            pw = np.ones(nb.shape, dtype=np.float64)
            pw[:, self.center] = prm.center_weight
            idx.append(rows[valid] * k + self.prev[safe][valid])
            wts.append(pw[valid])
        hist = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=n * k).reshape(n, k)
        sm = prm.near_smoothing
        near_den = hist.sum(axis=1) + sm  # (n,)
        w = self._weights()[depth]  # (n, 4)
        # p_near and p_up are (counts + sm · p_seg) / den: their p_seg parts are folded into one coefficient, so the
        # mixture costs a few passes over (n, K) however many sources share p_seg
        c_seg = w[:, 1] + w[:, 2] * sm / near_den
        up = has = up_rows = up_den = None
        if self.pairs is not None:
            above = np.maximum(pos - self.layout.height * self.layout.width, 0)  # the same position one depth up
            has = (depth > 0) & known[above]
            up = np.where(has, tokens[above], -1)
            up_rows = self.pairs[depth[has], up[has]]  # (m, K)
            up_den = up_rows.sum(axis=1) + sm
            c_seg += w[:, 3]
            c_seg[has] -= w[has, 3] * (1.0 - sm / up_den)
        else:
            c_seg += w[:, 3]  # p_up is p_seg
        p = p_model * w[:, 0:1]
        p += p_seg * c_seg[:, None]
        p += hist * (w[:, 2] / near_den)[:, None]
        if up_rows is not None and len(up_rows):
            p[has] += up_rows * (w[has, 3] / up_den)[:, None]
        p /= p.sum(axis=1, keepdims=True)
        self._pending = (depth, w, p_model, p_seg, hist, near_den, has, up, up_rows, up_den)
        return p

    def update(self, symbols: np.ndarray) -> None:
        """The step's coded symbols (n,), in the order of the `pos` given to `mix`."""
        depth, w, p_model, p_seg, hist, near_den, has, up, up_rows, up_den = self._pending
        self._pending = None
        sm = self.params.near_smoothing
        sym = np.asarray(symbols, dtype=np.int64)
        rows = np.arange(len(sym))
        seg_x = p_seg[rows, sym]
        up_x = seg_x.copy()
        if up_rows is not None and len(up_rows):
            up_x[has] = (up_rows[np.arange(len(up_rows)), sym[has]] + sm * seg_x[has]) / up_den
        px = np.stack([p_model[rows, sym], seg_x, (hist[rows, sym] + sm * seg_x) / near_den, up_x], axis=1) * w
        resp = px / px.sum(axis=1, keepdims=True)
        d, k = self.layout.depth, self.layout.vocab_size
        present = np.bincount(depth, minlength=d) > 0
        self.credit[present] *= self.params.decay
        for i in range(4):
            self.credit[:, i] += np.bincount(depth, weights=resp[:, i], minlength=d)
        self.counts += np.bincount(depth * k + sym, minlength=d * k).reshape(d, -1)
        if up is not None:
            np.add.at(self.pairs, (depth[has], up[has], sym[has]), 1.0)


__all__ = ["ADAPTIVE_V1", "AdaptiveMixer", "AdaptiveParams", "window_table"]
