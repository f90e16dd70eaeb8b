"""LPIPS-VGG perceptual distance (Zhang et al. 2018, v0.1 linear heads), as used by the VQGAN objective.

Same computation and key names as the LPIPS module of taming-transformers (`net.*` aside), so its numbers match:
scale the input, take five VGG16 ReLU taps, unit-normalise each feature vector over channels, square the
difference, weight channels with a learned 1x1 head, average over space and sum over taps.

The linear heads ship with vqforge (`assets/lpips_vgg_lin.safetensors`, the official LPIPS v0.1 weights,
BSD-2-Clause, see `assets/LPIPS_LICENSE.txt`); the VGG16 backbone comes from `load_vgg16_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .vgg import TAP_CHANNELS, VGG16Features, load_vgg16_weights

LPIPS_LIN_PATH = Path(__file__).resolve().parent / "assets" / "lpips_vgg_lin.safetensors"
LPIPS_EPS = 1e-10

__all__ = ["LPIPS", "LPIPS_LIN_PATH", "load_vgg16_weights"]


class _LinearHead(nn.Module):
    """1x1 conv C -> 1 without bias. Stored as `model.1.weight` like LPIPS (slot 0 held its dropout, which is
    inactive in eval mode; LPIPS is always in eval mode here, so the slot is an identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalize(x: torch.Tensor, eps: float = LPIPS_EPS) -> torch.Tensor:
    """Divide each spatial feature vector by its L2 norm over channels: (N, C, H, W) -> (N, C, H, W)."""
    norm = torch.sqrt(torch.sum(x * x, dim=1, keepdim=True))  # (N, 1, H, W)
    return x / (norm + eps)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG. `forward(x, y)` with images in [-1, 1] -> per-sample distance (N, 1, 1, 1), float32.

    Parameters never require grad and the module stays in eval mode even after `.train()`, so it can live inside
    a training module. Gradients still flow to the inputs (the generator learns through it).
    """

    def __init__(self, vgg_state_dict: Mapping[str, torch.Tensor], lin_path: str | Path | None = None) -> None:
        super().__init__()
        # LPIPS' ScalingLayer: moves [-1, 1] inputs to the ImageNet statistics VGG was trained on
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        self.net.load_state_dict(dict(vgg_state_dict), strict=True)
        for i, c in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{i}", _LinearHead(c))
        # strict: a heads file with other keys or shapes raises here instead of silently keeping random heads
        self._load_heads(load_file(str(lin_path or LPIPS_LIN_PATH)))
        self.requires_grad_(False)
        super().train(False)

    def _load_heads(self, heads: dict[str, torch.Tensor]) -> None:
        own = {f"lin{i}.model.1.weight": getattr(self, f"lin{i}").model[1].weight for i in range(len(TAP_CHANNELS))}
        if set(heads) != set(own):
            raise ValueError(f"LPIPS head file has keys {sorted(heads)}, expected {sorted(own)}")
        with torch.no_grad():
            for k, p in own.items():
                if heads[k].shape != p.shape:
                    raise ValueError(f"LPIPS head {k} has shape {tuple(heads[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(heads[k])

    def train(self, mode: bool = True) -> LPIPS:
        """Ignores `mode`: LPIPS is a fixed metric, always evaluated in eval mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (N, 3, H, W) in [-1, 1] -> (N, 1, 1, 1) float32 distance."""
        # float32 even under autocast: the unit normalisation and squared differences of small feature
        # differences lose most of their digits in bf16/fp16
        with torch.autocast(device_type=x.device.type, enabled=False):
            fx = self.net((x.float() - self.shift) / self.scale)
            fy = self.net((y.float() - self.shift) / self.scale)
            total = torch.zeros(x.shape[0], 1, 1, 1, device=x.device)
            for i, (a, b) in enumerate(zip(fx, fy)):
                diff = (_unit_normalize(a) - _unit_normalize(b)) ** 2  # (N, C_i, H_i, W_i)
                head: _LinearHead = getattr(self, f"lin{i}")
                total = total + head(diff).mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1)
        return total


def build_lpips(vgg_path: str | None = None) -> LPIPS:
    """LPIPS with the real VGG16 weights (see `load_vgg16_weights` for where they are looked up)."""
    return LPIPS(load_vgg16_weights(vgg_path))
