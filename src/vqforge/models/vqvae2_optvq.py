"""VQ-VAE-2 with optimal-transport code assignment (model_type vqvae2optvq / VQVAE2_OptVQ / vqvae2_optvq /
Vqvae2OptVQ; `vqvaeoptvq` is the single-level VqVae with this quantizer, see dalle_vqvae.py): the hierarchical VQ-VAE-2 of vqvae2.py whose every level quantizes with a
`SinkhornQuantizer` (quantizers/sinkhorn.py) instead of an EMA codebook.

Architecture and data flow are vqvae2.py's (same module tree), configured by `model.vqvae2_optvq` with this family's
defaults (3 levels, scaling_rates [8, 4, 2], res_channels 32). Each level's `codebooks.{l}` holds `conv_in` (1x1 conv
to embed_dim) and `quantizer` with `embedding.weight` (K, embed_dim) and, with use_proj, `proj.{weight,bias}`: the
key names of the user's OptVQ VQ-VAE-2 checkpoints (whose duplicate `encoder.*` / `decoder.*` / `vq_vae.*` copies
are accepted when they equal the canonical tensors, see VQVAE2._load_from_state_dict).

The codebook is trained by gradients (the OptVQ loss), so its parameters are in the optimizer. Training assigns
codes from a Sinkhorn transport plan (sampled when use_prob); eval mode assigns nearest codes, so `encode` is
deterministic and batch-independent.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import ModelConfig
from ..errors import ConfigError
from ..quantizers.base import QuantizerOutput
from ..quantizers.sinkhorn import SinkhornQuantizer
from .registry import register_model
from .vqvae2 import VQVAE2


class OptVQCodeLayer(nn.Module):
    """1x1 conv to embed_dim followed by one Sinkhorn (OptVQ) quantizer."""

    def __init__(self, in_channels: int, embed_dim: int, nb_entries: int, quantizer: SinkhornQuantizer):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, embed_dim, 1)
        self.quantizer = quantizer

    def forward(self, h: torch.Tensor) -> QuantizerOutput:
        # the transport solve and distances run in fp32 even under bf16 autocast
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.quantizer(self.conv_in(h.float()))


class VQVAE2OptVQ(VQVAE2):
    """Hierarchical VQ-VAE-2 whose levels assign codes by optimal transport (see the module docstring)."""

    def _code_layer(self, in_channels: int, embed_dim: int, nb_entries: int) -> nn.Module:
        c = self.config.vqvae2_optvq
        q = SinkhornQuantizer(nb_entries, embed_dim, epsilon=c.epsilon, n_iters=c.n_iters,
                              normalize_mode=c.normalize_mode, use_prob=c.use_prob, beta=c.beta,
                              loss_q_type=c.loss_q_type, use_proj=c.use_proj)
        return OptVQCodeLayer(in_channels, embed_dim, nb_entries, q)


@register_model("vqvae2_optvq", aliases=("vqvae2optvq", "VQVAE2_OptVQ", "Vqvae2OptVQ"))
def build_vqvae2_optvq(config: ModelConfig) -> VQVAE2OptVQ:
    """Build an OptVQ VQ-VAE-2 from `config.vqvae2_optvq`."""
    c = config.vqvae2_optvq
    if len(c.scaling_rates) != c.nb_levels:
        raise ConfigError("model.vqvae2_optvq.scaling_rates",
                          f"has {len(c.scaling_rates)} entries but nb_levels is {c.nb_levels}",
                          "give one scaling rate per level (e.g. [8, 4, 2] for 3 levels), or set nb_levels to "
                          f"{len(c.scaling_rates)}")
    return VQVAE2OptVQ(config)
