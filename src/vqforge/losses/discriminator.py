"""PatchGAN discriminator (pix2pix / taming-transformers NLayerDiscriminator) with BatchNorm or ActNorm.

Layer layout and key names (`main.N.*`) are those of taming-transformers, so its `loss.discriminator.*` weights
load with strict key checking once the prefix is stripped.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .. import distributed as dist

DiscNorm = Literal["batch", "act"]


class ActNorm(nn.Module):
    """Per-channel affine `scale * (x + loc)`, initialised from the first training batch (Glow's ActNorm).

    On the first forward in training mode with `initialized == 0`, `loc = -mean` and `scale = 1 / (std + 1e-6)`
    over (N, H, W) of that batch, so the output starts with zero mean and unit variance per channel.
    Keys: `loc`, `scale` (1, C, 1, 1) and the uint8 buffer `initialized`, as in taming-transformers.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # Python mirror of `initialized`, so steady-state forwards do not read the buffer (a device sync on GPU)
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded buffer on the next training forward

    # state a skipped training step puts back (train/snapshot.py): the forward writes loc/scale and the mirror
    def in_place_parameters(self) -> list[torch.Tensor]:
        return [self.loc, self.scale]

    def host_state(self) -> bool:
        return self._known_initialized

    def load_host_state(self, state: bool) -> None:
        self._known_initialized = state

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> bool:
        """Data-dependent init from this batch; False (nothing written) when the batch is not finite."""
        c = x.shape[1]
        flat = x.detach().float().transpose(0, 1).reshape(c, -1)  # (C, N*H*W)
        # a non-finite batch (the step will be skipped) must not become loc/scale for the rest of the run; every
        # rank decides alike, since rank 0's statistics are broadcast below
        if not dist.all_true(bool(torch.isfinite(flat).all()), x.device):
            return False
        mean = flat.mean(dim=1)
        std = flat.std(dim=1)  # unbiased, as the reference
        self.loc.copy_((-mean).view(1, c, 1, 1))
        self.scale.copy_((1.0 / (std + 1e-6)).view(1, c, 1, 1))
        # every rank sees a different first batch: take rank 0's statistics so replicas stay identical
        dist.broadcast(self.loc.data)
        dist.broadcast(self.scale.data)
        self.initialized.fill_(1)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._known_initialized:
            if int(self.initialized.item()) == 0:
                if not self._initialize(x):
                    return self.scale * (x + self.loc)  # not initialised yet: the next finite batch does it
            self._known_initialized = True
        return self.scale * (x + self.loc)


def _norm_layer(norm: DiscNorm, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else ActNorm(channels)


def init_discriminator_weights(module: nn.Module) -> None:
    """The reference initialisation: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), BatchNorm bias 0.

    Conv biases keep PyTorch's default initialisation and ActNorm is set from data, both as in
    taming-transformers. Use with `module.apply(...)`.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: (N, input_nc, H, W) -> (N, 1, H', W') real/fake logits, one per overlapping patch.

    `n_layers` stride-2 4x4 convs (the first without norm), one stride-1 4x4 conv with norm, then a stride-1 4x4
    conv to one channel; all padding 1, LeakyReLU(0.2) between; channels ndf * min(2^i, 8).
    Convs followed by BatchNorm have no bias (BatchNorm's shift replaces it); with ActNorm they keep one.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: DiscNorm = "batch") -> None:
        super().__init__()
        if norm not in ("batch", "act"):
            raise ValueError(f"norm must be 'batch' or 'act', got {norm!r}")
        if n_layers < 1 or ndf < 1 or input_nc < 1:
            raise ValueError(f"input_nc, ndf and n_layers must be >= 1, got {input_nc}, {ndf}, {n_layers}")
        use_bias = norm != "batch"
        kw, padw = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers):  # stride-2 blocks, channels doubling up to 8 * ndf
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                _norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            _norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw),  # one logit per patch
        ]
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
