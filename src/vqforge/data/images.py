"""Image files with Pillow: probe (header only) and load as RGB.

GIFs and multi-page TIFFs give their first frame; EXIF orientation is applied (phone photos); grayscale, palette,
alpha and CMYK images become RGB (alpha is dropped, not composited); 16-bit and float grayscale images are scaled
to 8 bits rather than clipped.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .video import MediaError

# What Pillow raises on damaged files besides OSError (struct/zlib errors from broken chunks, SyntaxError from
# some header parsers, DecompressionBombError for absurd sizes).
PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error, zlib.error,
               Image.DecompressionBombError)


_EXIF_ORIENTATION = 0x0112


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header; MediaError if the file is not an image Pillow can open."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except PIL_ERRORS as e:
        raise MediaError(f"cannot open as image ({type(e).__name__}: {e})") from e
    if w <= 0 or h <= 0:
        raise MediaError(f"image has size {w}x{h}")
    return w, h


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB (high bit depths scaled, not clipped)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            a = a / 257.0
        else:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        g = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # palette transparency must pass through RGBA to convert cleanly
    return im.convert("RGB")


def load_image(path: str | Path, min_short_side: int | None = None) -> Image.Image:
    """Decode an image file to RGB.

    min_short_side lets JPEG decoding shrink by 1/2, 1/4 or 1/8 in the DCT domain (Pillow's draft mode) while keeping
    the shorter side at least that long: large photos load several times faster, and the result is resized anyway.
    """
    try:
        with Image.open(path) as im:
            if min_short_side is not None and im.format == "JPEG":
                im.draft("RGB", (min_short_side, min_short_side))
            # Image.open stands on the first frame of a GIF / multi-page TIFF, which is the one used
            if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
            rgb.load()
    except PIL_ERRORS as e:
        raise MediaError(f"cannot decode image ({type(e).__name__}: {e})") from e
    if rgb.width <= 0 or rgb.height <= 0:
        raise MediaError(f"image has size {rgb.width}x{rgb.height}")
    return rgb


def array_to_image(a: np.ndarray) -> Image.Image:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array as an RGB image."""
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.stack([a, a, a], axis=-1)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) array, got shape {a.shape}")
    return Image.fromarray(np.ascontiguousarray(a), "RGB")
