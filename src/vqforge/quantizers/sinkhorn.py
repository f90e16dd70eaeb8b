"""Vector quantization with optimal-transport code assignment (OptVQ, Zhang et al. 2024), as the user's VQ-VAE-2
OptVQ family trained it.

Training forward for N vectors x (N, C) and codebook E = proj(embedding.weight) (K, C) (or embedding.weight):

    D = cdist(x, E)                                    (N, K) Euclidean distances, with gradient
    A = normalise(D)                                   "all": (D − mean)/std − min;  "dim": D/sqrt(C);  "null": D
    P = Sinkhorn(exp(−epsilon·A), n_iters)             a transport plan whose columns (codes) receive equal mass
    k = sample from P's row (use_prob) or argmax        every code gets used: no codebook collapse by construction
    loss  ce: cross_entropy(−D, k)                     pulls x and E together at the chosen pairs (gradient to both)
          l2: mse(x, sg[E_k]) + beta·mse(E_k, sg[x])   (l1 likewise)
    output x + sg[E_k − x]                             straight-through

Sinkhorn sums over the whole batch, so under DDP its row and total sums are all-reduced (each rank's columns are its
own samples; the plan is balanced over the global batch). Eval mode assigns the nearest code (argmin of D): a
per-vector, batch-independent and deterministic choice, so `encode` gives the same tokens for an image whatever
else is in the batch and `decode(encode(x))` equals the eval reconstruction.

State dict: `embedding.weight` (K, C) and, with use_proj, `proj.weight` (C, C), `proj.bias` (C,) — the user's keys.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .assign import code_counts
from .base import (Quantizer, QuantizerOutput, code_stats, flatten_channels_last, straight_through,
                   unflatten_channels_last)

NormalizeMode = Literal["all", "dim", "null"]
LossType = Literal["ce", "l2", "l1"]


def normalize_cost(cost: torch.Tensor, dim: int, mode: NormalizeMode) -> torch.Tensor:
    """Distance matrix -> the cost Sinkhorn sees ("all": standardised then shifted to min 0)."""
    if mode == "all":
        cost = (cost - cost.mean()) / (cost.std() + 1e-6)
        return cost - cost.min()
    if mode == "dim":
        return cost / math.sqrt(dim)
    return cost


@torch.no_grad()
def sinkhorn(cost: torch.Tensor, n_iters: int, epsilon: float) -> torch.Tensor:
    """(N, K) cost -> (N, K) plan, each row summing to 1, columns balanced (each code ≈ N/K of the mass).

    Rows are this process's samples; the total and the per-code sums are taken over all DDP ranks."""
    q = torch.exp(-cost * epsilon).t()  # (K, N)
    k = q.shape[0]
    n = q.shape[1] * distributed.world_size()
    total = distributed.all_reduce_sum(q.sum().clone())
    q = q / (total + 1e-8)
    for _ in range(n_iters):
        rows = distributed.all_reduce_sum(q.sum(dim=1, keepdim=True))  # (K, 1) mass per code
        q = q / (rows + 1e-8) / k
        cols = q.sum(dim=0, keepdim=True)  # (1, N) mass per sample (local)
        q = q / (cols + 1e-8) / n
    return (q * n).t()  # (N, K)


class SinkhornQuantizer(Quantizer):
    """OptVQ quantizer: learned codebook (through an optional linear projection), Sinkhorn assignment in training."""

    def __init__(self, n_embed: int, embed_dim: int, epsilon: float = 10.0, n_iters: int = 5,
                 normalize_mode: NormalizeMode = "all", use_prob: bool = True, beta: float = 1.0,
                 loss_q_type: LossType = "ce", use_proj: bool = True):
        super().__init__(n_embed, embed_dim)
        if normalize_mode not in ("all", "dim", "null"):
            raise ValueError(f"normalize_mode must be 'all', 'dim' or 'null', got {normalize_mode!r}")
        if loss_q_type not in ("ce", "l2", "l1"):
            raise ValueError(f"loss_q_type must be 'ce', 'l2' or 'l1', got {loss_q_type!r}")
        self.epsilon = epsilon
        self.n_iters = n_iters
        self.normalize_mode = normalize_mode
        self.use_prob = use_prob
        self.beta = beta
        self.loss_q_type = loss_q_type
        self.use_proj = use_proj
        self.embedding = nn.Embedding(n_embed, embed_dim)  # N(0, 1) init, as the user's model
        if use_proj:
            self.proj = nn.Linear(embed_dim, embed_dim)
            nn.init.normal_(self.proj.weight, std=embed_dim**-0.5)

    @property
    def codebook(self) -> torch.Tensor:
        """(K, C) effective codebook (with gradient to embedding/proj)."""
        return self.proj(self.embedding.weight) if self.use_proj else self.embedding.weight

    def assign(self, x: torch.Tensor, codebook: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """Code index per row of x (N,): Sinkhorn plan in training, nearest code in eval."""
        if not self.training:
            return torch.argmin(dist.detach(), dim=1)
        with torch.no_grad():
            plan = sinkhorn(normalize_cost(dist.detach(), codebook.shape[1], self.normalize_mode),
                            self.n_iters, self.epsilon)
            if not self.use_prob:
                return torch.argmax(plan, dim=1)
            # a row of all zeros (underflow) cannot be sampled: give its best code a tiny mass, as the user's model
            best = torch.argmax(plan, dim=1)
            plan[torch.arange(plan.shape[0], device=plan.device), best] += 1e-8
            return torch.multinomial(plan, num_samples=1).squeeze(1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, C, H, W) -> quantized (B, C, H, W) in z's dtype, indices (B, H, W), loss, stats."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"SinkhornQuantizer expects {self.embed_dim} channels, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = flatten_channels_last(z).float()  # (N, C)
            codebook = self.codebook.float()  # (K, C)
            dist = torch.cdist(x, codebook, p=2.0)  # (N, K)
            indices = self.assign(x, codebook, dist)
            x_q = codebook[indices]  # (N, C), gradient to the codebook
            loss = self._loss(x, x_q, dist, indices)
            quantized = straight_through(x_q, x)  # value exactly x_q (eval: equals decode), gradient to x
        quantized = unflatten_channels_last(quantized, b, h, w).to(z.dtype)
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, code_stats(code_counts(indices, self.num_codes)))

    def _loss(self, x: torch.Tensor, x_q: torch.Tensor, dist: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.loss_q_type == "ce":
            return F.cross_entropy(-dist, indices)
        err = (lambda a: a.pow(2)) if self.loss_q_type == "l2" else (lambda a: a.abs())
        return torch.mean(err(x - x_q.detach())) + self.beta * torch.mean(err(x_q - x.detach()))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, C, H, W) effective codebook vectors."""
        if indices.dim() == 4 and indices.shape[1] == 1:
            indices = indices[:, 0]
        if indices.dim() != 3:
            raise ValueError(f"expected indices of shape (B, H, W), got {tuple(indices.shape)}")
        with torch.autocast(device_type=indices.device.type, enabled=False):
            codes = F.embedding(indices, self.codebook.float())  # (B, H, W, C)
        return codes.permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (f"n_embed={self.num_codes}, embed_dim={self.embed_dim}, epsilon={self.epsilon}, n_iters={self.n_iters}, "
                f"normalize_mode={self.normalize_mode!r}, use_prob={self.use_prob}, loss_q_type={self.loss_q_type!r}, "
                f"use_proj={self.use_proj}")
