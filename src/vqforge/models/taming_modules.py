"""Encoder and Decoder of the taming-transformers VQGAN (its `diffusionmodules/model.py` architecture).

Module and parameter names are the same as taming-transformers' so that its state dicts load unchanged with
strict key checking (`encoder.down.0.block.0.norm1.weight`, `decoder.up.2.attn.0.q.bias`, ...). Every `DDConfig`
option is honoured; the time embedding of the diffusion variant is not part of the VQGAN and is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import DDConfig

GROUPS = 32  # GroupNorm groups: every normalised channel count must be a multiple of this


def normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm as used throughout the VQGAN: 32 groups, eps 1e-6, affine."""
    return nn.GroupNorm(num_groups=GROUPS, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    # x * sigmoid(x); F.silu computes the same function in one kernel
    return F.silu(x)


class ResnetBlock(nn.Module):
    """norm → swish → conv3x3 → norm → swish → dropout → conv3x3, plus a 1x1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, H*W, C): one head
            # contiguous: SDPA's fused CPU (flash) kernel needs unit stride on the last dimension; on the strided
            # view it falls back to the unfused math path, about 1.5x slower forward + backward
            return t.reshape(b, 1, c, h * w).transpose(2, 3).contiguous()

        # softmax(q k^T / sqrt(C)) v, the same scaling as the reference; SDPA picks a fused kernel
        out = F.scaled_dot_product_attention(tokens(self.q(hn)), tokens(self.k(hn)), tokens(self.v(hn)))
        out = out.transpose(2, 3).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W: stride-2 3x3 conv after padding right/bottom by one (or 2x2 average pooling)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        # the asymmetric (0, 1, 0, 1) pad keeps pretrained weights aligned with the reference
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, then (optionally) a 3x3 conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (empty or one AttnBlock per block), and a resampler."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    """ResnetBlock → AttnBlock → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) -> latent (B, z_channels (x2 if double_z), R/f, R/f), f = 2^(len(ch_mult)-1)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)

        in_ch_mult = (1, *cfg.ch_mult)
        curr_res = cfg.resolution
        block_in = cfg.ch
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block_in = cfg.ch * in_ch_mult[i_level]
            block_out = cfg.ch * cfg.ch_mult[i_level]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                # attention is placed by the resolution this level works at (as computed from cfg.resolution)
                if curr_res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, cfg.resamp_with_conv)
                curr_res //= 2
            self.down.append(level)

        self.mid = _Mid(block_in, cfg.dropout)
        self.norm_out = normalize(block_in)
        out_channels = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, R, R)
        for i_level, level in enumerate(self.down):
            h = level.run_blocks(h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid(h)  # (B, ch*ch_mult[-1], R/f, R/f)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, R/f, R/f) -> image (B, out_ch, R, R)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, cfg.dropout)

        # built from the lowest resolution upwards, but stored so that up[i] is level i (up[0] = full resolution)
        levels: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            block_out = cfg.ch * cfg.ch_mult[i_level]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i_level != 0:
                level.upsample = Upsample(block_in, cfg.resamp_with_conv)
                curr_res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)

        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch*ch_mult[-1], R/f, R/f)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            h = level.run_blocks(h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))  # (B, out_ch, R, R)
