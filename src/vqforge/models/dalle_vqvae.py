"""The user's single-level VQ-VAE (model_type VqVae / vq_vae / vqvae, and vqvaeoptvq with the OptVQ quantizer;
native family `dalle_vqvae`).

Its configs carry DALL-E-dVAE parameter names (`group_count, n_hid, n_blk_per_group, vocab_size, n_init,
input_channels, output_channels, commitment_cost, decay`), but the network the user's `VqVae2` class builds is a
VQGAN-style encoder/decoder around one codebook; `group_count`, `n_hid`, `n_blk_per_group` and `output_channels`
never reach it (the reader lists them as having no effect). vqforge builds that network with the same module tree:

    encoder.model: conv3x3(input_channels → c0); per level i < L−1: 2 × ResidualBlock(c_i → c_{i+1})
                   (+ attention after each at the deepest level), DownSampleBlock except at the last level;
                   ResidualBlock, NonLocalBlock, ResidualBlock, GroupNorm, Swish, conv3x3(c_{L−1} → n_init)
    vq_vae:        SmoothedEMAQuantizer (decay > 0; keys embedding.weight, ema_cluster_size, ema_w) or, with
                   decay 0, a gradient-trained VectorQuantizer (loss mse(e, sg z) + commitment_cost·mse(sg e, z))
    decoder.model: conv3x3(n_init → d0), ResidualBlock, NonLocalBlock, ResidualBlock; per level j: 3 ×
                   ResidualBlock (+ attention at the deepest resolution, levels 0 and 1), UpSampleBlock after level
                   j ≥ 1; GroupNorm, Swish, conv3x3(→ input_channels)

    vq_vae (quantizer: optvq, model_type vqvaeoptvq): OptVQQuantizer holding `optvq_quantizer`, a SinkhornQuantizer
                   (keys embedding.weight and, with optvq_use_proj, proj.{weight,bias}) with the settings the user's
                   class fixed: epsilon 10, 5 iterations, "all" normalisation, sampled assignment, l2 loss with
                   weight optvq_beta; nearest code in eval mode

with encoder widths c = `channels` (the user's: [128, 128, 128, 256, 256, 512], downsampling 16) and decoder widths
d = c[1:] reversed. Residual blocks: GroupNorm(32)-Swish-conv3x3 twice, plus a 1x1 `channel_up` when widths change.
State-dict keys are the user's (`encoder.model.{i}...`, `vq_vae.*`, `decoder.model.{i}...`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import ModelConfig
from ..quantizers.base import Quantizer, QuantizerOutput, check_index_range
from ..quantizers.sinkhorn import SinkhornQuantizer
from ..quantizers.smoothed_ema import SmoothedEMAQuantizer
from ..quantizers.base import CodebookQuantizer
from ..quantizers.vq import VectorQuantizer
from .output import TokenizerOutput
from .registry import register_model


class GroupNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.gn = nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(x)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(GroupNorm(c_in), Swish(), nn.Conv2d(c_in, c_out, 3, 1, 1),
                                   GroupNorm(c_out), Swish(), nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.channel_up = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.channel_up is None else self.channel_up(x)
        return skip + self.block(x)


class DownSampleBlock(nn.Module):
    """Stride-2 conv3x3 after padding right/bottom by one (exact halving of even sizes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class UpSampleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0))  # nearest


class NonLocalBlock(nn.Module):
    """Single-head self-attention over all positions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.gn = GroupNorm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        # the user's forward never applies proj_out; it is kept (checkpoints hold it) but frozen, so no optimizer
        # or DDP gradient bucket waits for a gradient that never comes
        self.proj_out.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.gn(x)
        q = self.q(hn).reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        k = self.k(hn).reshape(b, c, h * w).transpose(1, 2)
        v = self.v(hn).reshape(b, c, h * w).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(C)) v
        # the user's model applies no output projection in its forward (proj_out exists but is unused)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], latent: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, 1, 1)]
        last = len(channels) - 2  # the deepest level: attention, no downsampling
        for i in range(len(channels) - 1):
            c_in, c_out = channels[i], channels[i + 1]
            for _ in range(2):
                layers.append(ResidualBlock(c_in, c_out))
                c_in = c_out
                if i == last:
                    layers.append(NonLocalBlock(c_in))
            if i != last:
                layers.append(DownSampleBlock(c_out))
        c = channels[-1]
        layers += [ResidualBlock(c, c), NonLocalBlock(c), ResidualBlock(c, c), GroupNorm(c), Swish(),
                   nn.Conv2d(c, latent, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    def __init__(self, latent: int, channels: list[int], out_channels: int):
        super().__init__()
        c_in = channels[0]
        layers: list[nn.Module] = [nn.Conv2d(latent, c_in, 3, 1, 1), ResidualBlock(c_in, c_in), NonLocalBlock(c_in),
                                   ResidualBlock(c_in, c_in)]
        for j, c_out in enumerate(channels):
            for _ in range(3):
                layers.append(ResidualBlock(c_in, c_out))
                c_in = c_out
                if j <= 1:  # levels 0 and 1 both run at the deepest resolution (upsampling follows level j >= 1)
                    layers.append(NonLocalBlock(c_in))
            if j != 0:
                layers.append(UpSampleBlock(c_in))
        layers += [GroupNorm(c_in), Swish(), nn.Conv2d(c_in, out_channels, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class OptVQQuantizer(Quantizer):
    """The OptVQ quantizer of model_type vqvaeoptvq, under the user's module name `optvq_quantizer` (so that the
    user's checkpoint keys `vq_vae.optvq_quantizer.*` load as they are)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float, use_proj: bool):
        super().__init__(n_embed, embed_dim)
        self.optvq_quantizer = SinkhornQuantizer(n_embed, embed_dim, epsilon=10.0, n_iters=5, normalize_mode="all",
                                                 use_prob=True, beta=beta, loss_q_type="l2", use_proj=use_proj)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        return self.optvq_quantizer(z)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        check_index_range(indices, self.num_codes)
        return self.optvq_quantizer.codes_from_indices(indices)


class DalleVQVAE(nn.Module):
    """Single-level VQ-VAE tokenizer: images in [-1, 1] -> indices (B, h, w) -> images."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.dalle_vqvae
        c.check("model.dalle_vqvae")
        self.encoder = Encoder(c.input_channels, list(c.channels), c.n_init)
        self.vq_vae: CodebookQuantizer | OptVQQuantizer
        if c.quantizer == "optvq":
            self.vq_vae = OptVQQuantizer(c.vocab_size, c.n_init, beta=c.optvq_beta, use_proj=c.optvq_use_proj)
        elif c.decay > 0:
            self.vq_vae = SmoothedEMAQuantizer(c.vocab_size, c.n_init, commitment_cost=c.commitment_cost, decay=c.decay)
        else:
            self.vq_vae = VectorQuantizer(c.vocab_size, c.n_init, beta=c.commitment_cost, legacy=False)
        self.decoder = Decoder(c.n_init, list(c.channels[1:])[::-1], c.input_channels)

    @property
    def num_codes(self) -> int:
        return self.vq_vae.num_codes

    @property
    def depth(self) -> int:
        return 1

    @property
    def downsample_factor(self) -> int:
        return self.config.dalle_vqvae.downsample_factor

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.model[-1].weight

    def set_step(self, step: int) -> None:
        self.vq_vae.set_step(step)

    def _check_input(self, x: torch.Tensor) -> None:
        f = self.downsample_factor
        if x.dim() != 4 or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"expected images (N, C, H, W) with H and W multiples of {f}, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        self._check_input(x)
        q = self.vq_vae(self.encoder(x))
        return TokenizerOutput(reconstruction=self.decoder(q.quantized), indices=q.indices, codebook_loss=q.loss,
                               stats=q.stats)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> indices (N, H/f, W/f). Call in eval mode (training mode moves the EMA codebook)."""
        self._check_input(x)
        return self.vq_vae(self.encoder(x)).indices

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (N, h, w) -> images (N, C, h·f, w·f)."""
        return self.decoder(self.vq_vae.codes_from_indices(indices))


@register_model("dalle_vqvae", aliases=("VqVae", "vq_vae", "vqvae"))
def build_dalle_vqvae(config: ModelConfig) -> DalleVQVAE:
    """Build the user's single-level VqVae from `config.dalle_vqvae`."""
    return DalleVQVAE(config)
