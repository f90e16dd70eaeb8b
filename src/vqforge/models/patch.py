"""The patch family: a small, fast tokenizer whose encoder and decoder are linear patch transforms at init.

    x (B, in, R, R) -> space-to-depth by f -> 1x1 conv to `channels` -> gated residual blocks -> 1x1 conv = latent
    latent -> quant_conv -> quantize -> post_quant_conv -> 1x1 conv -> gated residual blocks -> 1x1 conv
           -> depth-to-space by f -> (B, out, R, R)

Every layer outside the residual blocks is linear, and each block enters through a scalar gate that starts at zero,
so the untrained network is a linear map of each f x f pixel patch to a code vector and back: trained with a
residual quantizer it starts where k-means on pixel patches stands, and the blocks then add spatial context and
non-linearity as their gates open. All convolutions run at the token grid (R/f), which makes a training step a
fraction of the cost of a VQGAN encoder/decoder that convolves at full resolution: the quickstart's network
(f 4, 128 channels, 2 blocks per side) trains at several steps per second on two CPU cores.

The quantizer is chosen as in the taming family (`model.variant` VQModel/EMAVQ/GumbelVQ/PQEMAVQ, or
`model.quantizer.type`; residual VQ with `rvq_levels`) and built by the same code, and the module exposes the same
tokenizer API (`encode`, `decode`, `forward`, depth prefixes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import ModelConfig
from ..errors import ConfigError
from ..quantizers import build_quantizer
from .registry import register_model
from .taming import TamingVQGAN
from .taming_modules import ResnetBlock


class GatedBlock(nn.Module):
    """x + g · (block(x) − x), with a learned scalar gate g that starts at 0: an identity at init."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = ResnetBlock(channels, channels)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate * (self.block(x) - x)


class PatchEncoder(nn.Module):
    def __init__(self, in_channels: int, factor: int, channels: int, num_blocks: int):
        super().__init__()
        self.factor = factor
        self.conv_in = nn.Conv2d(in_channels * factor * factor, channels, kernel_size=1)
        self.blocks = nn.Sequential(*[GatedBlock(channels) for _ in range(num_blocks)])
        self.conv_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, R, R) -> (B, channels, R/f, R/f)
        return self.conv_out(self.blocks(self.conv_in(F.pixel_unshuffle(x, self.factor))))


class PatchDecoder(nn.Module):
    def __init__(self, out_channels: int, factor: int, channels: int, num_blocks: int):
        super().__init__()
        self.factor = factor
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.blocks = nn.Sequential(*[GatedBlock(channels) for _ in range(num_blocks)])
        self.conv_out = nn.Conv2d(channels, out_channels * factor * factor, kernel_size=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, channels, h, w) -> (B, out, h·f, w·f)
        return F.pixel_shuffle(self.conv_out(self.blocks(self.conv_in(z))), self.factor)


class PatchTokenizer(TamingVQGAN):
    """The patch family's tokenizer; the quantizer and the tokenizer API are the taming family's."""

    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)
        check_patch_config(cfg)
        self.config = cfg
        p = cfg.patch
        self.encoder = PatchEncoder(p.in_channels, p.factor, p.channels, p.num_blocks)
        self.decoder = PatchDecoder(p.out_channels, p.factor, p.channels, p.num_blocks)
        self.quant_conv = nn.Conv2d(p.channels, cfg.embed_dim, kernel_size=1)
        self.quantize = build_quantizer(cfg.variant, cfg.quantizer, cfg.n_embed, cfg.embed_dim, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, p.channels, kernel_size=1)

    @property
    def downsample_factor(self) -> int:
        return self.config.patch.factor


def check_patch_config(cfg: ModelConfig) -> None:
    """ConfigError for settings this architecture cannot build (configs built in code skip the schema's check)."""
    if cfg.family != "patch":
        raise ConfigError("model.family", f"{cfg.family!r} is not the patch family", "use family: patch")
    cfg.patch.check("model.patch")
    cfg.quantizer_choice()  # model.quantizer.type and rvq_levels against the variant


@register_model("patch")
def build_patch(cfg: ModelConfig) -> PatchTokenizer:
    """Build a patch-family tokenizer from `cfg` (n_embed, embed_dim, patch, quantizer)."""
    return PatchTokenizer(cfg)
