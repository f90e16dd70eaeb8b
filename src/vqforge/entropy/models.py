"""The registered entropy models.

`transformer_ar` — the previous system's design, kept as the baseline: a decoder-only Transformer (pre-LN, rotary
position embedding, sigmoid-gated ReLU feed-forward, BOS = K) that codes one token per step in depth → row → column
order. The previous frame's tokens are a *prefix* of the same causal sequence (`prev tokens, BOS, current tokens`),
so every current token can attend to all of them; an intra frame has no prefix. Decoding needs D·H·W passes per
frame; `step_logits` keeps a key/value cache so that each pass costs one token, not the whole sequence.

`masked_groups` — a few-pass design: each frame is conditioned on the previous frame's tokens (added to the input
at the same grid position, reachable everywhere through attention), residual depths are coded in order (depth d
sees every token of depths < d), and inside a depth the H·W positions are coded in `num_groups` fixed groups taken
from an ordered-dither (Bayer) ranking, so that each group is spread evenly over the frame and later groups see
their already decoded neighbours. A bidirectional Transformer predicts all positions of a group at once: D ·
num_groups passes per frame.

Both take layouts of any size at run time; `max_seq_len` / `max_positions` bound it (a ConfigError names the fix).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import EntropyModel, FrameLayout, register_entropy_model


# --- building blocks ---------------------------------------------------------------------------------------------
def rope_tables(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (L, dim) for rotary embedding of interleaved pairs (x[2i], x[2i+1]) with angle
    position · base^(-2i/dim)."""
    i = torch.arange(dim // 2, dtype=torch.float32, device=positions.device)
    inv = torch.pow(torch.tensor(base, dtype=torch.float32, device=positions.device), -2.0 * i / dim)
    ang = positions.to(torch.float32)[:, None] * inv[None, :]
    return ang.cos().repeat_interleave(2, dim=-1), ang.sin().repeat_interleave(2, dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, L, dim); rotates each (even, odd) pair."""
    rot = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).reshape(x.shape)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        if d_model % nhead:
            raise ConfigError("entropy.model.nhead", f"d_model {d_model} is not divisible by nhead {nhead}",
                              "choose nhead that divides d_model (e.g. 8 for 512)")
        self.nhead = nhead
        self.head_dim = d_model // nhead
        if self.head_dim % 2:
            raise ConfigError("entropy.model.nhead", f"head size d_model/nhead = {self.head_dim} is odd; rotary "
                              "embedding rotates pairs", "choose d_model/nhead even")
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.nhead, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache: dict | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """mask: bool (Lq, Lk), True = may attend. cache: {"k", "v"} of earlier positions, extended in place.
        rows: compute the output only at these sequence positions (queries), attending to every position."""
        xq = x if rows is None else x[:, rows]
        q, k, v = self._split(self.q(xq)), self._split(self.k(x)), self._split(self.v(x))
        if rope is not None:
            cos, sin = rope
            q = apply_rope(q, cos, sin) if rows is None else apply_rope(q, cos[rows], sin[rows])
            k = apply_rope(k, cos, sin)
        if mask is not None and rows is not None:
            mask = mask[rows]
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class GatedFeedForward(nn.Module):
    """sigmoid(W1 x) ⊙ relu(W2 x), projected back by W3."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden)
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.sigmoid(self.gate(x)) * torch.relu(self.up(x)))


class Block(nn.Module):
    """Pre-LN: x + drop(attn(LN x)); x + drop(ff(LN x))."""

    def __init__(self, d_model: int, nhead: int, ff_hidden: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, nhead)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = GatedFeedForward(d_model, ff_hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, rope=None, mask=None, cache=None, rows=None):
        """rows: the block's output only at these sequence positions (B, len(rows), C); every position is still
        attended to. Used where only some positions' logits are needed (the last block of a coding step)."""
        a = self.attn(self.norm1(x), rope, mask, cache, rows)
        x = (x if rows is None else x[:, rows]) + self.drop(a)
        return x + self.drop(self.ff(self.norm2(x)))


def _check_common(vocab_size: int, d_model: int, num_layers: int, nhead: int, dropout: float) -> None:
    if vocab_size < 2:
        raise ConfigError("entropy.model.vocab_size", f"must be >= 2, got {vocab_size}", "take it from the tokenizer")
    if d_model < 2 or num_layers < 1 or nhead < 1:
        raise ConfigError("entropy.model", f"d_model {d_model}, num_layers {num_layers}, nhead {nhead} must be "
                          "positive", "use e.g. d_model 256, num_layers 4, nhead 8")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError("entropy.model.dropout", f"must be in [0, 1), got {dropout}", "use 0.0 or e.g. 0.1")


class TrainableEntropyModel(EntropyModel):
    """What the trainer needs on top of the codec contract: batched teacher-forced logits and a training loss."""

    def batch_logits(self, tokens: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """tokens (B, D, H, W), prev (B, D, H, W) or None (all intra) -> (B, D·H·W, K): exactly what the coder sees,
        position by position (to float tolerance)."""
        raise NotImplementedError

    def training_nll(self, tokens: torch.Tensor, prev: torch.Tensor | None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(nll in nats per predicted position (M,), depth of each (M,)) for a training loss. Default: the exact
        teacher-forced rate."""
        b, d, h, w = tokens.shape
        logits = self.batch_logits(tokens, prev)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1), reduction="none")
        depth = torch.arange(d, device=tokens.device).repeat_interleave(h * w).repeat(b)
        return nll, depth

    def forward(self, intra: torch.Tensor | None, prev: torch.Tensor | None, cur: torch.Tensor | None) -> torch.Tensor:
        """Training forward (one call, so that DistributedDataParallel sees one forward per backward): nll in nats of
        every predicted position of the intra frames `intra` and of the frames `cur` given their previous `prev`."""
        parts = []
        if intra is not None:
            parts.append(self.training_nll(intra, None)[0])
        if cur is not None:
            parts.append(self.training_nll(cur, prev)[0])
        return torch.cat(parts)

    def passes_per_frame(self, layout: FrameLayout) -> int:
        return len(self.schedule(layout))

    def frame_logits(self, tokens, prev, layout):
        return self.batch_logits(tokens[None], None if prev is None else prev[None])[0]


# --- the baseline: one token per step ----------------------------------------------------------------------------
@register_entropy_model("transformer_ar")
class ARTransformer(TrainableEntropyModel):
    """Decoder-only causal Transformer over `[prev frame tokens, BOS, current frame tokens]` (prev omitted at an
    intra frame), raster order depth → row → column, rotary positions over the whole sequence."""

    def __init__(self, vocab_size: int, d_model: int = 512, num_layers: int = 4, nhead: int = 8,
                 ff_hidden_dim: int | None = None, dropout: float = 0.0, max_seq_len: int = 16384,
                 rope_base: float = 10000.0):
        super().__init__()
        _check_common(vocab_size, d_model, num_layers, nhead, dropout)
        self.vocab_size = vocab_size
        self.cfg = dict(vocab_size=vocab_size, d_model=d_model, num_layers=num_layers, nhead=nhead,
                        ff_hidden_dim=ff_hidden_dim, dropout=dropout, max_seq_len=max_seq_len, rope_base=rope_base)
        ff = ff_hidden_dim if ff_hidden_dim is not None else 3 * d_model
        self.bos = vocab_size
        self.max_seq_len = max_seq_len
        self.rope_base = rope_base
        self.embed = nn.Embedding(vocab_size + 1, d_model)
        self.blocks = nn.ModuleList(Block(d_model, nhead, ff, dropout) for _ in range(num_layers))
        self.head = nn.Linear(d_model, vocab_size)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self._cache: dict | None = None

    def model_config(self) -> dict[str, Any]:
        return dict(self.cfg)

    def schedule(self, layout: FrameLayout) -> list[torch.Tensor]:
        return [torch.tensor([i]) for i in range(layout.numel)]

    def sequence_length(self, layout: FrameLayout, with_prev: bool = True) -> int:
        return (layout.numel if with_prev else 0) + layout.numel

    def check_layout(self, layout: FrameLayout) -> None:
        if layout.vocab_size != self.vocab_size:
            raise ConfigError("entropy.model.vocab_size", f"the model codes {self.vocab_size} symbols, the tokens "
                              f"come from {layout.vocab_size}", "train the entropy model on this tokenizer")
        n = self.sequence_length(layout)
        if n > self.max_seq_len:
            raise ConfigError("entropy.model.max_seq_len", f"a frame of {layout.depth}x{layout.height}x"
                              f"{layout.width} tokens with its previous frame as prefix is a sequence of {n}, more "
                              f"than max_seq_len {self.max_seq_len}", f"set max_seq_len >= {n}")

    def _run(self, ids: torch.Tensor, start: int, caches: list[dict] | None) -> torch.Tensor:
        """ids (B, L) at positions start..start+L-1; causal over everything cached plus these."""
        L = ids.shape[1]
        pos = torch.arange(start, start + L, device=ids.device)
        rope = rope_tables(pos, self.blocks[0].attn.head_dim, self.rope_base)
        kpos = torch.arange(start + L, device=ids.device)
        mask = kpos[None, :] <= pos[:, None]
        x = self.embed(ids)
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope, mask, None if caches is None else caches[i])
        return self.head(x)

    def batch_logits(self, tokens, prev):
        b = tokens.shape[0]
        cur = tokens.reshape(b, -1)
        bos = torch.full((b, 1), self.bos, dtype=cur.dtype, device=cur.device)
        parts = ([prev.reshape(b, -1)] if prev is not None else []) + [bos, cur[:, :-1]]
        seq = torch.cat(parts, dim=1)
        if seq.shape[1] > self.max_seq_len:
            raise ConfigError("entropy.model.max_seq_len", f"sequence of {seq.shape[1]} tokens exceeds "
                              f"max_seq_len {self.max_seq_len}", f"set max_seq_len >= {seq.shape[1]}")
        logits = self._run(seq, 0, None)
        return logits[:, -cur.shape[1]:]

    @torch.no_grad()
    def step_logits(self, tokens, known, prev, layout, step):
        """Incremental decoding with a key/value cache. After the call for step s the cache holds the prefix and
        tokens 0..s-1; the call for step s+1 feeds token s. Any other call (another frame, another prev, a jump)
        replays from the prefix, so a step's logits never depend on the call history: the prefix is one chunk and
        every current token one more cached pass, on the encoder's and on the decoder's side alike."""
        flat = tokens.reshape(-1)
        c = self._cache
        same_prev = c is not None and ((prev is None and c["prev"] is None) or (
            prev is not None and c["prev"] is not None and torch.equal(c["prev"], prev)))
        if (same_prev and c["layout"] == layout and c["step"] == step - 1
                and torch.equal(c["revealed"][:step - 1], flat[:step - 1])):
            c["logits"] = self._run(flat[step - 1:step][None], c["pos"], c["caches"])[0, -1:]
            c["pos"] += 1
        else:
            c = self._start(flat, prev, layout, step)
        c["step"] = step
        c["revealed"] = flat.clone()
        self._cache = c
        return c["logits"].float()

    @torch.no_grad()
    def _start(self, flat: torch.Tensor, prev: torch.Tensor | None, layout: FrameLayout, step: int) -> dict:
        self.check_layout(layout)
        caches: list[dict] = [{} for _ in self.blocks]
        head = [prev.reshape(-1)] if prev is not None else []
        ids = torch.cat(head + [torch.tensor([self.bos], device=flat.device, dtype=flat.dtype)])
        logits = self._run(ids[None], 0, caches)[0, -1:]
        pos = ids.numel()
        for s in range(step):  # the revealed tokens one by one, as a decoder reaches this step
            logits = self._run(flat[s:s + 1][None], pos, caches)[0, -1:]
            pos += 1
        return {"caches": caches, "pos": pos, "logits": logits, "layout": layout,
                "prev": None if prev is None else prev.clone()}

    def reset_cache(self) -> None:
        self._cache = None


# --- few passes: groups of positions per depth ---------------------------------------------------------------------
def bayer_rank(height: int, width: int) -> torch.Tensor:
    """(H·W,) int64: the order in which an 8×8 ordered-dither (Bayer) matrix, tiled over the grid, visits the
    positions (ties between tiles broken in raster order). Every prefix of this order is spread evenly."""
    b = torch.zeros(1, 1, dtype=torch.int64)
    for _ in range(3):  # 1x1 -> 2x2 -> 4x4 -> 8x8
        b = torch.cat([torch.cat([4 * b, 4 * b + 2], 1), torch.cat([4 * b + 3, 4 * b + 1], 1)], 0)
    r = torch.arange(height)[:, None] % 8
    c = torch.arange(width)[None, :] % 8
    value = b[r, c].reshape(-1)
    key = value * (height * width) + torch.arange(height * width)  # stable: value first, then raster index
    order = torch.argsort(key)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(height * width)
    return rank


def group_sizes(n: int, groups: int, kind: str) -> list[int]:
    """Sizes of `groups` consecutive groups over n positions (empty groups dropped). "uniform": equal; "cosine":
    cumulative fraction 1 − cos(π/2 · g/G), small early groups (little context) and large late ones."""
    g = min(groups, n)
    if kind == "uniform":
        cum = [round(n * (i + 1) / g) for i in range(g)]
    elif kind == "cosine":
        cum = [round(n * (1.0 - math.cos(math.pi / 2 * (i + 1) / g))) for i in range(g)]
    else:
        raise ConfigError("entropy.model.group_schedule", f"unknown schedule {kind!r}", "use 'cosine' or 'uniform'")
    cum[-1] = n
    sizes, last = [], 0
    for c in cum:
        c = max(c, last + 1) if last < n else last
        sizes.append(c - last)
        last = c
    return [s for s in sizes if s > 0]


_SINUSOIDS: dict[tuple, torch.Tensor] = {}


def sinusoid_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """(H·W, dim) fixed 2-D position code: half the channels encode the row, half the column. Computed once per
    (H, W, dim, device); callers must not modify the returned tensor in place."""
    key = (height, width, dim, str(torch.device(device) if device is not None else torch.device("cpu")))
    if key not in _SINUSOIDS:
        _SINUSOIDS[key] = _sinusoid_2d(height, width, dim, device)
    return _SINUSOIDS[key]


def _sinusoid_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    def one(n: int, d: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
        i = torch.arange(d // 2, dtype=torch.float32, device=device)[None, :]
        ang = pos / torch.pow(torch.tensor(10000.0, device=device), 2 * i / d)
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    half = dim // 2
    rows = one(height, half)[:, None, :].expand(height, width, half)
    cols = one(width, dim - half)[None, :, :].expand(height, width, dim - half)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


@register_entropy_model("masked_groups")
class MaskedGroupsTransformer(TrainableEntropyModel):
    """Few-pass model. Coding steps: for depth d = 0..D−1, for group g = 0..G−1: the positions of group g at depth
    d. Input at each grid position: a 2-D position code + the target depth's embedding + per depth, the current
    token's embedding where known, else that depth's mask embedding + the previous frame's tokens at that position
    (all depths), or a learned "no previous frame" vector. A bidirectional pre-LN Transformer maps it to logits."""

    def __init__(self, vocab_size: int, depth: int = 1, d_model: int = 256, num_layers: int = 4, nhead: int = 8,
                 ff_hidden_dim: int | None = None, dropout: float = 0.0, num_groups: int = 6,
                 group_schedule: str = "cosine", max_positions: int = 4096, patch_size: int = 1):
        super().__init__()
        _check_common(vocab_size, d_model, num_layers, nhead, dropout)
        if depth < 1:
            raise ConfigError("entropy.model.depth", f"must be >= 1, got {depth}", "take it from the tokenizer")
        if num_groups < 1:
            raise ConfigError("entropy.model.num_groups", f"must be >= 1, got {num_groups}", "use e.g. 4 to 8")
        group_sizes(64, num_groups, group_schedule)  # validates the schedule name
        if patch_size < 1:
            raise ConfigError("entropy.model.patch_size", f"must be >= 1, got {patch_size}",
                              "use 1 (one Transformer position per token) or 2 / 4 for large token grids")
        self.patch_size = patch_size
        self.vocab_size = vocab_size
        self.depth = depth
        self.num_groups = num_groups
        self.group_schedule = group_schedule
        self.max_positions = max_positions
        self.d_model = d_model
        self.cfg = dict(vocab_size=vocab_size, depth=depth, d_model=d_model, num_layers=num_layers, nhead=nhead,
                        ff_hidden_dim=ff_hidden_dim, dropout=dropout, num_groups=num_groups,
                        group_schedule=group_schedule, max_positions=max_positions)
        if patch_size != 1:  # only when set, so that models saved before the option keep their hash
            self.cfg["patch_size"] = patch_size
        ff = ff_hidden_dim if ff_hidden_dim is not None else 3 * d_model
        self.cur_embed = nn.Embedding(depth * (vocab_size + 1), d_model)  # per depth: K codes + mask
        self.prev_embed = nn.Embedding(depth * vocab_size, d_model)
        self.no_prev = nn.Parameter(torch.zeros(d_model))
        self.target_depth = nn.Embedding(depth, d_model)
        self.blocks = nn.ModuleList(Block(d_model, nhead, ff, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size * patch_size ** 2)  # per patch: p² positions × K, position-major
        if patch_size > 1:  # the p×p positions' inputs, concatenated, -> one Transformer position
            self.patch_in = nn.Linear(patch_size ** 2 * d_model, d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
        self._sched_cache: dict[tuple[int, int, int], tuple[list[torch.Tensor], torch.Tensor]] = {}

    def model_config(self) -> dict[str, Any]:
        return dict(self.cfg)

    def check_layout(self, layout: FrameLayout) -> None:
        # a prefix of the residual depths (the codec's --depth D) is coded like the first D depths of a full frame
        if layout.vocab_size != self.vocab_size or not 1 <= layout.depth <= self.depth:
            raise ConfigError("entropy.model", f"the model codes depth {self.depth} x {self.vocab_size} symbols, the "
                              f"tokens are depth {layout.depth} x {layout.vocab_size}",
                              "train the entropy model on this tokenizer")
        p = self.patch_size
        if layout.height % p or layout.width % p:
            raise ConfigError("entropy.model.patch_size", f"a {layout.height}x{layout.width} token grid is not "
                              f"divisible into {p}x{p} patches", "choose a patch_size that divides both sides")
        if layout.height * layout.width > self.max_positions:
            raise ConfigError("entropy.model.max_positions", f"a {layout.height}x{layout.width} token grid has "
                              f"{layout.height * layout.width} positions, more than {self.max_positions}",
                              f"set max_positions >= {layout.height * layout.width}")

    # -- schedule -------------------------------------------------------------------------------------------------
    def _groups(self, h: int, w: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per group: sorted flat grid positions, (H·W,) group id of each position)."""
        key = (h, w, self.num_groups)
        if key not in self._sched_cache:
            rank = bayer_rank(h, w)
            order = torch.argsort(rank)
            gid = torch.empty(h * w, dtype=torch.int64)
            groups, start = [], 0
            for g, size in enumerate(group_sizes(h * w, self.num_groups, self.group_schedule)):
                members = order[start:start + size]
                gid[members] = g
                groups.append(torch.sort(members).values)
                start += size
            self._sched_cache[key] = (groups, gid)
        return self._sched_cache[key]

    def schedule(self, layout: FrameLayout) -> list[torch.Tensor]:
        groups, _ = self._groups(layout.height, layout.width)
        hw = layout.height * layout.width
        return [d * hw + g for d in range(layout.depth) for g in groups]

    def _step_state(self, layout: FrameLayout, step: int) -> tuple[int, int]:
        groups, _ = self._groups(layout.height, layout.width)
        return divmod(step, len(groups))  # (depth, group)

    # -- network --------------------------------------------------------------------------------------------------
    def _forward(self, tokens: torch.Tensor, known: torch.Tensor, prev: torch.Tensor | None,
                 target: torch.Tensor, cells: torch.Tensor | None = None,
                 prev_part: torch.Tensor | None = None) -> torch.Tensor:
        """tokens, known (S, D, H, W); prev (S, D, H, W) or None (intra); target (S,) depth being predicted
        -> logits (S, H·W, K), or with `cells` (n,) grid positions (row·W + column): (S, n, K) for these only (the
        last block, the norm and the head then run only where needed: a coding step's positions). prev_part: what
        `_prev_input(prev)` gives, when the caller already has it."""
        if tokens.shape[1] < self.depth:  # a depth prefix: the deeper depths are unknown (their mask embeddings),
            # exactly as while the first depths of a full frame are coded; the previous frame has the prefix only
            pad = (tokens.shape[0], self.depth - tokens.shape[1], *tokens.shape[2:])
            tokens = torch.cat([tokens, tokens.new_zeros(pad)], dim=1)
            known = torch.cat([known, known.new_zeros(pad)], dim=1)
        s, d, h, w = tokens.shape
        K = self.vocab_size
        offs = torch.arange(d, device=tokens.device).view(1, d, 1, 1)
        cur_ids = torch.where(known, tokens, torch.full_like(tokens, K)) + offs * (K + 1)
        x = self.cur_embed(cur_ids).sum(1)  # (S, H, W, C)
        x = x + (self._prev_input(prev) if prev_part is None else prev_part)
        p = self.patch_size
        hp, wp = h // p, w // p
        if p > 1:  # (S, H, W, C) -> (S, H/p·W/p, p²·C), sub-position (row in patch)·p + column in patch
            x = self.patch_in(x.reshape(s, hp, p, wp, p, -1).permute(0, 1, 3, 2, 4, 5).reshape(s, hp * wp, -1))
        x = x.reshape(s, hp * wp, -1) + sinusoid_2d(hp, wp, self.d_model, tokens.device)
        x = x + self.target_depth(target)[:, None]
        for blk in self.blocks[:-1]:
            x = blk(x)
        if cells is None:
            x = self.head(self.norm(self.blocks[-1](x)))  # (S, N, p²·K)
            if p > 1:
                x = x.reshape(s, hp, wp, p, p, K).permute(0, 1, 3, 2, 4, 5)
            return x.reshape(s, h * w, K)
        r, c = cells // w, cells % w
        patch = (r // p) * wp + c // p
        rows, inv = torch.unique(patch, sorted=True, return_inverse=True)
        x = self.norm(self.blocks[-1](x, rows=rows))  # (S, len(rows), C)
        if p == 1:
            return self.head(x)[:, inv]
        sub = (r % p) * p + c % p
        weight = self.head.weight.view(p * p, K, -1)
        bias = self.head.bias.view(p * p, K)
        out = x.new_empty(s, len(cells), K)
        for j in range(p * p):  # each sub-position has its own K rows of the head
            sel = (sub == j).nonzero().reshape(-1)
            if len(sel):
                out[:, sel] = F.linear(x[:, inv[sel]], weight[j], bias[j])
        return out

    def _prev_input(self, prev: torch.Tensor | None) -> torch.Tensor:
        """The previous frame's part of the input: (S, H, W, C) from prev (S, D, H, W), or the intra vector (C,)."""
        if prev is None:
            return self.no_prev
        offs = torch.arange(prev.shape[1], device=prev.device).view(1, -1, 1, 1)
        return self.prev_embed(prev + offs * self.vocab_size).sum(1)

    def _cached_prev_input(self, prev: torch.Tensor | None) -> torch.Tensor:
        """`_prev_input(prev[None])`, computed once for the D·G coding steps of a frame: reused while prev and the
        weights it reads are unchanged (the same operations on the same values: bit-identical either way)."""
        key = (self.prev_embed.weight._version, self.no_prev._version, self.prev_embed.weight.data_ptr())
        c = getattr(self, "_prev_cache", None)
        if c is not None and c[0] == key and (
                (prev is None and c[1] is None) or (prev is not None and c[1] is not None
                                                    and c[1].shape == prev.shape and torch.equal(c[1], prev))):
            return c[2]
        part = self._prev_input(None if prev is None else prev[None])
        self._prev_cache = (key, None if prev is None else prev.clone(), part)
        return part

    def _states(self, layout: FrameLayout, device) -> tuple[torch.Tensor, torch.Tensor]:
        """known masks (S, D, H, W) and target depths (S,) of every coding step."""
        _, gid = self._groups(layout.height, layout.width)
        n_groups = int(gid.max()) + 1
        d, h, w = layout.depth, layout.height, layout.width
        dd = torch.arange(d).view(d, 1)
        gg = gid.view(1, h * w)
        known = []
        for t in range(d):
            for g in range(n_groups):
                known.append((dd < t) | ((dd == t) & (gg < g)))
        target = torch.arange(d).repeat_interleave(n_groups)
        return torch.stack(known).view(-1, d, h, w).to(device), target.to(device)

    def batch_logits(self, tokens, prev):
        b, d, h, w = tokens.shape
        layout = FrameLayout(d, h, w, self.vocab_size)
        self.check_layout(layout)
        known, target = self._states(layout, tokens.device)
        steps = self.schedule(layout)
        S = known.shape[0]
        out = torch.empty(b, d * h * w, self.vocab_size, dtype=torch.float32, device=tokens.device)
        for i in range(b):  # one batched pass over every coding step of frame i
            t = tokens[i:i + 1].expand(S, d, h, w)
            p = None if prev is None else prev[i:i + 1].expand(S, d, h, w)
            logits = self._forward(t, known, p, target)  # (S, H·W, K)
            for s, pos in enumerate(steps):
                out[i, pos.to(tokens.device)] = logits[s, pos.to(tokens.device) - target[s] * h * w].float()
        return out

    @torch.no_grad()
    def step_logits(self, tokens, known, prev, layout, step):
        self.check_layout(layout)
        t, _ = self._step_state(layout, step)
        pos = self.schedule(layout)[step].to(tokens.device)
        target = torch.tensor([t], device=tokens.device)
        cells = pos - t * layout.height * layout.width
        logits = self._forward(tokens[None], known[None], None, target, cells, self._cached_prev_input(prev))
        return logits[0].float()

    def training_nll(self, tokens, prev, generator=None):
        """One pass per frame at a random coding step (depth t, group g) of the fixed schedule: the input is what
        the decoder knows at that step; the loss covers every depth-t position not yet known (groups >= g)."""
        b, d, h, w = tokens.shape
        layout = FrameLayout(d, h, w, self.vocab_size)
        self.check_layout(layout)
        _, gid = self._groups(h, w)
        n_groups = int(gid.max()) + 1
        state = torch.randint(0, d * n_groups, (b,), generator=generator).to(tokens.device)
        t, g = state // n_groups, state % n_groups
        dd = torch.arange(d, device=tokens.device).view(1, d, 1)
        gg = gid.to(tokens.device).view(1, 1, h * w)
        known = (dd < t.view(b, 1, 1)) | ((dd == t.view(b, 1, 1)) & (gg < g.view(b, 1, 1)))
        logits = self._forward(tokens, known.view(b, d, h, w), prev, t)  # (B, H·W, K)
        target = tokens.reshape(b, d, h * w).gather(1, t.view(b, 1, 1).expand(b, 1, h * w))[:, 0]  # (B, H·W)
        unknown = gid.to(tokens.device).view(1, -1) >= g.view(b, 1)
        nll = F.cross_entropy(logits.reshape(-1, self.vocab_size).float(), target.reshape(-1), reduction="none")
        mask = unknown.reshape(-1)
        return nll[mask], t.view(b, 1).expand(b, h * w).reshape(-1)[mask]
