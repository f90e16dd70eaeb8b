"""Input layouts every quantizer accepts: image feature maps, sequences of vectors and video, channel-first or last.

Each quantizer's `forward` works on an image feature map (B, C, H, W). `Quantizer.__call__` takes any of

    channel_last=False:  (B, C, H, W) image    (B, C, N) sequence    (B, C, T, H, W) video
    channel_last=True:   (B, H, W, C)          (B, N, C)             (B, T, H, W, C)

maps it to (B', C, H', W') (a sequence is one row of N positions, a video is B·T frames), quantizes, and returns
`quantized` in the caller's layout. Indices keep the positions in the caller's order; the level axis of multi-level
quantizers (residual depth D, product subspaces S) stands where the channel axis stood:

    single level:  (B, H, W)      (B, N)       (B, T, H, W)
    levels, channel-first:  (B, L, H, W)   (B, L, N)   (B, L, T, H, W)
    levels, channel-last:   (B, H, W, L)   (B, N, L)   (B, T, H, W, L)

`Quantizer.get_output_from_indices(indices, channel_last=..., spatial_dims=...)` maps such indices back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["sequence", "image", "video"]
_KIND_OF_SPATIAL_DIMS: dict[int, Kind] = {1: "sequence", 2: "image", 3: "video"}


@dataclass(frozen=True)
class Layout:
    """A caller's layout: its kind, where its channel (or level) axis is, batch size and spatial sizes."""

    kind: Kind
    channel_last: bool
    batch: int
    spatial: tuple[int, ...]  # (N,), (H, W) or (T, H, W)

    @classmethod
    def of_features(cls, z: torch.Tensor, channel_last: bool) -> Layout:
        """The layout of a (B, C, *spatial) tensor, or (B, *spatial, C) with channel_last."""
        kind = _KIND_OF_SPATIAL_DIMS.get(z.dim() - 2)
        if kind is None:
            shapes = "(B, N, C), (B, H, W, C) or (B, T, H, W, C)" if channel_last else \
                "(B, C, N), (B, C, H, W) or (B, C, T, H, W)"
            raise ValueError(f"a quantizer takes {shapes}{' (channel_last=True)' if channel_last else ''}, "
                             f"got shape {tuple(z.shape)}")
        spatial = z.shape[1:-1] if channel_last else z.shape[2:]
        return cls(kind, channel_last, z.shape[0], tuple(spatial))

    @classmethod
    def of_indices(cls, indices: torch.Tensor, spatial_dims: int, channel_last: bool) -> tuple[Layout, bool]:
        """The layout of indices with `spatial_dims` position axes (1 sequence, 2 image, 3 video), and whether they
        have a level axis (one axis more than the positions and the batch)."""
        kind = _KIND_OF_SPATIAL_DIMS.get(spatial_dims)
        if kind is None:
            raise ValueError(f"spatial_dims is 1 (sequence), 2 (image) or 3 (video), got {spatial_dims}")
        levels = indices.dim() == spatial_dims + 2
        if not levels and indices.dim() != spatial_dims + 1:
            raise ValueError(f"{kind} indices have {spatial_dims + 1} axes, or {spatial_dims + 2} with a level axis, "
                             f"got shape {tuple(indices.shape)}")
        if not levels:
            spatial = indices.shape[1:]
        else:
            spatial = indices.shape[1:-1] if channel_last else indices.shape[2:]
        return cls(kind, channel_last, indices.shape[0], tuple(spatial)), levels

    @property
    def is_image_map(self) -> bool:
        """True when the caller's layout already is the (B, C, H, W) map (nothing to convert)."""
        return self.kind == "image" and not self.channel_last

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """Caller layout (B, C, *spatial) / (B, *spatial, C) -> (B', C, H', W')."""
        if self.channel_last:
            x = x.movedim(-1, 1)
        if self.kind == "sequence":
            return x.unsqueeze(2)  # (B, C, 1, N)
        if self.kind == "video":
            b, c, t, h, w = x.shape
            return x.transpose(1, 2).reshape(b * t, c, h, w)
        return x

    def from_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B', C, H', W') -> the caller's layout."""
        if self.kind == "sequence":
            x = x.squeeze(2)
        elif self.kind == "video":
            t, h, w = self.spatial
            x = x.reshape(self.batch, t, x.shape[1], h, w).transpose(1, 2)
        return x.movedim(1, -1) if self.channel_last else x

    def indices_from_map(self, indices: torch.Tensor) -> torch.Tensor:
        """(B', H', W') or (B', L, H', W') -> the caller's layout (the level axis where the channel axis was)."""
        if indices.dim() == 3:
            return self.from_map(indices.unsqueeze(1)).squeeze(-1 if self.channel_last else 1)
        return self.from_map(indices)

    def indices_to_map(self, indices: torch.Tensor, levels: bool) -> torch.Tensor:
        """The caller's indices -> (B', H', W') or, with a level axis, (B', L, H', W')."""
        if levels:
            return self.to_map(indices)
        return self.to_map(indices.unsqueeze(-1 if self.channel_last else 1)).squeeze(1)
