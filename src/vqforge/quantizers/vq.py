"""Straight-through vector quantizer (VQ-VAE, VQGAN), numerically taming-transformers' `VectorQuantizer2`."""

from __future__ import annotations

import torch
from torch import nn

from .base import CodebookQuantizer
from .maintenance import CodeUpdate, MaintenanceConfig


class VectorQuantizer(CodebookQuantizer):
    """Straight-through VQ with a gradient-trained codebook (van den Oord et al. 2017; taming's VectorQuantizer2).

    loss (legacy=True, taming's default): mse(sg[zq], z) + beta·mse(zq, sg[z]); legacy=False puts beta on the
    commitment term instead: beta·mse(sg[zq], z) + mse(zq, sg[z]). State dict: `embedding.weight` (K, C).
    Options `codebook_dim` (factorised codes) and `cosine` (l2-normalised codes): see CodebookQuantizer.
    """

    def __init__(
        self,
        n_embed: int,
        embed_dim: int,
        beta: float = 0.25,
        legacy: bool = True,
        maintenance: MaintenanceConfig | None = None,
        codebook_dim: int | None = None,
        cosine: bool = False,
    ):
        super().__init__(n_embed, embed_dim, codebook_dim=codebook_dim, cosine=cosine)
        self.beta = beta
        self.legacy = legacy
        # nn.Embedding's own init then uniform(-1/K, 1/K): the same RNG draws as taming, so seeds give the same codebook
        self.embedding = nn.Embedding(n_embed, self.code_width)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)
        self._init_maintenance(maintenance)

    def _level_loss(self, codes: torch.Tensor, z_flat: torch.Tensor) -> torch.Tensor:
        commit = torch.mean((codes.detach() - z_flat) ** 2)
        codebook = torch.mean((codes - z_flat.detach()) ** 2)
        if self.legacy:
            return commit + self.beta * codebook
        return self.beta * commit + codebook

    @torch.no_grad()
    def _write_codes(self, update: CodeUpdate) -> None:
        w = self.embedding.weight
        update.write(w, update.codes.to(w.dtype))

    def extra_repr(self) -> str:
        return (f"n_embed={self.num_codes}, embed_dim={self.embed_dim}, beta={self.beta}, legacy={self.legacy}, "
                f"codebook_dim={self.codebook_dim}, cosine={self.cosine}")
