"""8-bit images: the one mapping between model images in [-1, 1] and uint8 pixels, per-image PSNR on those pixels,
and the reconstruction grids that training and `vqforge eval` write.

- `to_uint8`: round((x + 1) * 127.5) (torch.round: halves to even), clamped to 0..255: the values vqforge writes to
  PNG files, and the pixels every metric is measured on (`vqforge.eval.metrics`). `from_uint8` is its inverse on
  pixel values: u / 127.5 - 1 (exact for every u in 0..255 after `to_uint8`).
- PSNR: per image, 10 log10(255^2 / MSE) with the MSE over all channels and pixels of that image (float64).
- reconstruction grid: inputs in the first row, reconstructions in the second (repeating in row pairs when there are
  more than `ncol` images), `pad` pixels of gray between and around tiles;
- labelled grid: the same pairs enlarged with nearest neighbour to at least `LABEL_MIN_TILE` pixels, rows named,
  each reconstruction captioned with its PSNR (`labelled_grid_size`).

This module depends on torch, numpy and Pillow only, so that training and evaluation can both use it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MAX_VALUE = 255.0
GRID_PAD_VALUE = 128


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 0..255: round((x + 1) * 127.5), clamped. vqforge writes PNGs with this too."""
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(u: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1] (u / 127.5 - 1), any shape and device; the inverse of `to_uint8`."""
    return u.to(torch.float32).div_(127.5).sub_(1.0)


def _as_float64_255(x: torch.Tensor) -> torch.Tensor:
    # uint8 input is taken as already quantized; float input is in [-1, 1] and gets quantized first
    if x.dtype != torch.uint8:
        x = to_uint8(x)
    return x.to(torch.float64)


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images ([-1, 1] floats or uint8) -> (N,) float64 MSE on the 0..255 scale."""
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    d = _as_float64_255(x) - _as_float64_255(y)
    return d.pow(2).flatten(1).mean(dim=1)


def psnr_from_mse(mse: torch.Tensor | float) -> torch.Tensor:
    """PSNR in dB for an MSE on the 0..255 scale; MSE 0 gives +inf."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(MAX_VALUE**2 / mse)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,) PSNR in dB (MAX 255) of each image pair; +inf for identical images."""
    return psnr_from_mse(mse_per_image(x, y))


# --- reconstruction grids ---------------------------------------------------------------------------------------
def _hwc_uint8(x: torch.Tensor) -> np.ndarray:
    # (N, C, H, W) in [-1, 1] (or uint8) -> (N, H, W, 3) uint8; gray images are repeated to RGB
    u = x if x.dtype == torch.uint8 else to_uint8(x)
    u = u.detach().cpu()
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    return u.permute(0, 2, 3, 1).contiguous().numpy()


def grid_size(n: int, height: int, width: int, ncol: int = 8, pad: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of `reconstruction_grid` for n image pairs of height x width."""
    cols = min(n, ncol)
    rows = 2 * math.ceil(n / ncol)
    return cols * width + (cols + 1) * pad, rows * height + (rows + 1) * pad


def reconstruction_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) inputs and reconstructions -> (H_grid, W_grid, 3) uint8, inputs above their reconstructions."""
    if inputs.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {tuple(inputs.shape)} vs {tuple(reconstructions.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("no images to show")
    a, b = _hwc_uint8(inputs), _hwc_uint8(reconstructions)
    n, h, w, _ = a.shape
    gw, gh = grid_size(n, h, w, ncol, pad)
    out = np.full((gh, gw, 3), GRID_PAD_VALUE, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        x0 = pad + c * (w + pad)
        for k, img in enumerate((a[i], b[i])):
            y0 = pad + (2 * r + k) * (h + pad)
            out[y0:y0 + h, x0:x0 + w] = img
    return out


def save_reconstruction_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                             ncol: int = 8, pad: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(reconstruction_grid(inputs, reconstructions, ncol, pad)).save(path)
    return path


# --- labelled grid: what a person looks at ------------------------------------------------------------------------
LABEL_MIN_TILE = 128  # small crops are enlarged (nearest neighbour, integer factor) to at least this many pixels
LABEL_MARGIN = 118  # left column with the row names
LABEL_CAPTION = 18  # strip under each reconstruction with its PSNR
LABEL_TITLE = 24
LABEL_PAD = 4
LABEL_BACKGROUND = (32, 32, 32)
LABEL_TEXT = (235, 235, 235)


def enlargement(height: int, width: int, min_tile: int = LABEL_MIN_TILE) -> int:
    """Integer nearest-neighbour factor that makes the larger side of an image at least `min_tile` pixels."""
    return max(1, math.ceil(min_tile / max(height, width)))


def labelled_grid_size(n: int, height: int, width: int, ncol: int = 8, min_tile: int = LABEL_MIN_TILE,
                       title: bool = True) -> tuple[int, int]:
    """(width, height) in pixels of `labelled_grid` for n image pairs of height x width."""
    s = enlargement(height, width, min_tile)
    th, tw = height * s, width * s
    cols, blocks = min(n, ncol), math.ceil(n / ncol)
    block_h = 2 * th + LABEL_CAPTION + 2 * LABEL_PAD
    return (LABEL_MARGIN + cols * (tw + LABEL_PAD) + LABEL_PAD,
            (LABEL_TITLE if title else 0) + blocks * block_h + LABEL_PAD)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def labelled_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, ncol: int = 8, title: str | None = None,
                  min_tile: int = LABEL_MIN_TILE) -> np.ndarray:
    """Originals above their reconstructions, enlarged with nearest neighbour, rows named, each reconstruction
    captioned with its PSNR (dB, 8-bit, `psnr_per_image`). (N, C, H, W) pairs -> (H_grid, W_grid, 3) uint8.

    Blocks of `ncol` pairs repeat downwards: an "original" row, a "reconstruction" row and a caption strip.
    """
    from PIL import ImageDraw

    if inputs.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {tuple(inputs.shape)} vs {tuple(reconstructions.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("no images to show")
    a, b = _hwc_uint8(inputs), _hwc_uint8(reconstructions)
    psnr = psnr_per_image(inputs.detach().cpu(), reconstructions.detach().cpu()).tolist()
    n, h, w, _ = a.shape
    s = enlargement(h, w, min_tile)
    th, tw = h * s, w * s
    gw, gh = labelled_grid_size(n, h, w, ncol, min_tile, title is not None)
    canvas = Image.new("RGB", (gw, gh), LABEL_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    y_top = 0
    if title is not None:
        draw.text((LABEL_PAD, 4), title, fill=LABEL_TEXT, font=font)
        y_top = LABEL_TITLE
    block_h = 2 * th + LABEL_CAPTION + 2 * LABEL_PAD
    for i in range(n):
        r, c = divmod(i, ncol)
        x0 = LABEL_MARGIN + c * (tw + LABEL_PAD)
        y0 = y_top + r * block_h + LABEL_PAD
        for k, img in enumerate((a[i], b[i])):
            big = img.repeat(s, axis=0).repeat(s, axis=1)  # nearest neighbour: the pixels as they are
            canvas.paste(Image.fromarray(big), (x0, y0 + k * (th + LABEL_PAD)))
        p = psnr[i]
        cap = f"#{i + 1}  {p:.1f} dB" if math.isfinite(p) else f"#{i + 1}  exact"
        draw.text((x0 + 2, y0 + 2 * th + LABEL_PAD + 2), cap, fill=LABEL_TEXT, font=small)
        if c == 0:
            draw.text((LABEL_PAD, y0 + th // 2 - 8), "original", fill=LABEL_TEXT, font=font)
            draw.text((LABEL_PAD, y0 + th + LABEL_PAD + th // 2 - 8), "reconstruction", fill=LABEL_TEXT, font=font)
            draw.text((LABEL_PAD, y0 + 2 * th + LABEL_PAD + 2), f"x{s} nearest", fill=LABEL_TEXT, font=small)
    return np.asarray(canvas, dtype=np.uint8).copy()


def save_labelled_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, ncol: int = 8,
                       title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_grid(inputs, reconstructions, ncol, title)).save(path)
    return path
