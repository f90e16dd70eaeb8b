"""Test clips anyone can regenerate offline: deterministic pans, zooms and cuts over the sample photos.

Every clip is rendered from a public-domain / CC0 photo that scikit-image ships (see `samples`), with Pillow's
bilinear affine warp (integer fixed-point arithmetic, so the pixels do not depend on the CPU). A clip is
(T, S, S, 3) uint8; `clip_sha256` identifies its pixels so a result can be tied to exactly these frames.

Kinds:
- pan_<photo>:    a square window of 0.6 x the photo's shorter side slides from the top-left to the bottom-right
                  at a constant sub-pixel speed;
- zoom_<photo>:   the window shrinks geometrically from the whole shorter side to 40 % of it, about the centre;
- cut_<a>_<b>:    a pan over photo a, then a hard cut at the middle frame to a pan over photo b.

`HELD_OUT_CLIPS` use only the photos the sample-photo training split never sees (coffee, chelsea).
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .samples import SAMPLE_PHOTOS_TRAIN, SAMPLE_PHOTOS_VAL, _load

DEFAULT_FRAMES = 32
DEFAULT_SIZE = 256
HELD_OUT_CLIPS = ("pan_chelsea", "zoom_coffee", "cut_chelsea_coffee")
TRAIN_CLIPS = ("pan_astronaut", "zoom_rocket", "cut_astronaut_rocket")
PHOTOS = SAMPLE_PHOTOS_TRAIN + SAMPLE_PHOTOS_VAL


def _warp(photo: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square [x0, x0 + side) x [y0, y0 + side) of `photo`, resampled to (size, size, 3)."""
    s = side / size
    # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f); +0.5 s - 0.5 centres the samples
    coeffs = (s, 0.0, x0 + 0.5 * s - 0.5, 0.0, s, y0 + 0.5 * s - 0.5)
    img = Image.fromarray(photo).transform((size, size), Image.Transform.AFFINE, coeffs,
                                           resample=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _photo(name: str) -> np.ndarray:
    photos = _load()
    if name not in photos:
        raise ConfigError("--clips", f"unknown photo {name!r} in a test clip name", f"use photos from {list(PHOTOS)}")
    return photos[name]


def _pan(photo: np.ndarray, frames: int, size: int) -> np.ndarray:
    h, w = photo.shape[:2]
    side = 0.6 * min(h, w)
    out = []
    for t in range(frames):
        a = t / max(frames - 1, 1)
        out.append(_warp(photo, a * (w - side), a * (h - side), side, size))
    return np.stack(out)


def _zoom(photo: np.ndarray, frames: int, size: int) -> np.ndarray:
    h, w = photo.shape[:2]
    full = float(min(h, w))
    out = []
    for t in range(frames):
        side = full * 0.4 ** (t / max(frames - 1, 1))
        out.append(_warp(photo, (w - side) / 2, (h - side) / 2, side, size))
    return np.stack(out)


def render_clip(name: str, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The clip `name` (see the module doc) as (frames, size, size, 3) uint8."""
    if frames < 1 or size < 8:
        raise ConfigError("--frames/--size", f"need frames >= 1 and size >= 8, got {frames} and {size}",
                          f"use e.g. {DEFAULT_FRAMES} frames of {DEFAULT_SIZE}x{DEFAULT_SIZE}")
    kind, _, rest = name.partition("_")
    makers: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {"pan": _pan, "zoom": _zoom}
    if kind in makers and rest:
        return makers[kind](_photo(rest), frames, size)
    if kind == "cut":
        a, _, b = rest.partition("_")
        if a and b:
            half = frames // 2
            return np.concatenate([_pan(_photo(a), half, size), _pan(_photo(b), frames - half, size)])
    raise ConfigError("--clips", f"unknown test clip {name!r}",
                      "use pan_<photo>, zoom_<photo> or cut_<photo>_<photo>, e.g. " + ", ".join(HELD_OUT_CLIPS))


def clip_sha256(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


def test_clips(names: tuple[str, ...] | list[str] = HELD_OUT_CLIPS, frames: int = DEFAULT_FRAMES,
               size: int = DEFAULT_SIZE) -> dict[str, np.ndarray]:
    """{name: (frames, size, size, 3) uint8} for each named clip."""
    return {n: render_clip(n, frames, size) for n in names}


test_clips.__test__ = False  # not a pytest test despite its name

__all__ = ["HELD_OUT_CLIPS", "TRAIN_CLIPS", "clip_sha256", "render_clip", "test_clips"]
