"""Resize the shorter side, crop a square, optionally flip — the same way for every frame of a clip — and the
(B, D, H, W, C) uint8 ↔ (B·D, C, H, W) float layout the models use.

The crop is drawn once per sample as fractions (fx, fy) of the free room and a flip bit, then applied to each frame
at that frame's own size; frames of one video share a size, so they get the identical pixel box. Pseudo-videos
built from images of different sizes get the same relative placement.

Images: resize + crop is one Pillow call (`resize(..., box=...)`, bicubic): only the crop's source region is
resampled, which equals resizing the whole image and then cropping. Video frames arrive already scaled (libswscale,
bicubic, during the YUV → RGB conversion; see vqforge.data.video), so for them this is an exact pixel crop at the
same offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..images import from_uint8, to_uint8
from .video import scaled_size


@dataclass(frozen=True)
class CropParams:
    fx: float  # in [0, 1): horizontal position of the crop within the free room (0.5 = centre)
    fy: float
    flip: bool  # horizontal flip
    center: bool  # ignore fx/fy and take the centre crop


CENTER = CropParams(0.5, 0.5, False, True)


def draw_crop_params(rng: np.random.Generator, random_crop: bool, hflip: bool) -> CropParams:
    """Training crop parameters. Always draws three numbers so the random stream does not depend on the options."""
    fx, fy, f = rng.random(3)
    return CropParams(float(fx), float(fy), bool(hflip and f < 0.5), not random_crop)


def crop_box(width: int, height: int, short_side: int, size: int, p: CropParams) -> tuple[float, float, float, float]:
    """Source-pixel box (left, top, right, bottom) that maps onto the `size`×`size` crop after scaling the shorter
    side to `short_side`."""
    s = short_side / min(width, height)
    rw, rh = scaled_size(width, height, short_side)
    room_x, room_y = rw - size, rh - size
    if p.center:
        x0, y0 = room_x // 2, room_y // 2
    else:
        x0, y0 = min(int(p.fx * (room_x + 1)), room_x), min(int(p.fy * (room_y + 1)), room_y)
    return (x0 / s, y0 / s, min((x0 + size) / s, width), min((y0 + size) / s, height))


def resize_crop(img: Image.Image, short_side: int, size: int, p: CropParams) -> np.ndarray:
    """Shorter side → `short_side`, crop `size`×`size` at `p`, flip if asked. Returns (size, size, 3) uint8."""
    if short_side < size:
        raise ValueError(f"short_side {short_side} is smaller than the crop {size}")
    box = crop_box(img.width, img.height, short_side, size, p)
    if min(img.width, img.height) == short_side and all(float(v).is_integer() for v in box):
        out = img.crop(tuple(int(v) for v in box))  # no scaling needed: exact pixels
    else:
        # reducing_gap: scale-downs of more than 2× start with an integer box reduction (Pillow's reduce), which
        # halves the cost for large photos; the result differs from a single bicubic pass by < 0.2 levels on average
        out = img.resize((size, size), Image.BICUBIC, box=box, reducing_gap=2.0)
    a = np.asarray(out, dtype=np.uint8)
    if p.flip:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)  # (H, W, 3)


def to_model_input(batch: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W, C) uint8 → (B·D, C, H, W) float32 in [-1, 1]; frame d of sample b is row b·D + d.

    Works on any device: move the uint8 batch first (4× less to copy), then convert.
    """
    if batch.dtype != torch.uint8 or batch.ndim != 5:
        raise ValueError(f"expected a (B, D, H, W, C) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")
    return from_uint8(batch.flatten(0, 1).permute(0, 3, 1, 2)).contiguous()  # (B·D, C, H, W)


def to_uint8_frames(x: torch.Tensor, sequence_length: int) -> torch.Tensor:
    """Inverse of `to_model_input`: (B·D, C, H, W) float in [-1, 1] → (B, D, H, W, C) uint8 (values clamped)."""
    if x.ndim != 4 or x.shape[0] % sequence_length:
        raise ValueError(f"expected (B·D, C, H, W) with B·D divisible by {sequence_length}, got {tuple(x.shape)}")
    u = to_uint8(x)  # (B·D, C, H, W)
    return u.permute(0, 2, 3, 1).reshape(-1, sequence_length, *u.shape[2:], u.shape[1])
