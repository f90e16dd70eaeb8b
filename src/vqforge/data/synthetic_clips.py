"""Test clips anyone can regenerate offline: deterministic pans and zooms rendered from the bundled sample photos
(public-domain / CC0, see README "Data"), optionally with a cut to another photo.

`render_clip(photo, kind, frames, size)` returns (T, size, size, 3) uint8 frames: a square window moves over the
photo (pan: along a straight line at constant speed; zoom: shrinking or growing about a fixed centre) and is
resampled to size × size with bilinear filtering. Everything is a function of the arguments, so the same call gives
the same pixels on every machine with the same Pillow. `write_clips(out_dir, ...)` writes a set of them as
near-lossless H.264 MP4s (CRF 4) for anything that reads videos from files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ClipSpec:
    photo: str  # a name from vqforge.data.samples (e.g. "astronaut")
    kind: str  # "pan_right" | "pan_down" | "pan_diag" | "zoom_in" | "zoom_out"
    frames: int = 16
    size: int = 64
    cut_to: str | None = None  # second photo after half the frames (a scene cut)


def _photo(name: str) -> np.ndarray:
    from .samples import _load

    photos = _load()
    if name not in photos:
        raise KeyError(f"unknown sample photo {name!r}; available: {sorted(photos)}")
    return photos[name]


def _window(h: int, w: int, kind: str, t: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the window at time t in [0, 1]."""
    side = 0.6 * min(h, w)
    if kind.startswith("pan"):
        span_x = (w - side) * 0.5
        span_y = (h - side) * 0.5
        dx = span_x * t if kind in ("pan_right", "pan_diag") else 0.0
        dy = span_y * t if kind in ("pan_down", "pan_diag") else 0.0
        x0, y0 = (w - side) * 0.2 + dx, (h - side) * 0.2 + dy
        return x0, y0, x0 + side, y0 + side
    if kind in ("zoom_in", "zoom_out"):
        f = t if kind == "zoom_in" else 1.0 - t
        s = side * (1.0 - 0.45 * f)
        cx, cy = w / 2, h / 2
        return cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2
    raise ValueError(f"unknown clip kind {kind!r}")


def render_clip(spec: ClipSpec) -> np.ndarray:
    out = []
    for i in range(spec.frames):
        name = spec.photo if spec.cut_to is None or i < spec.frames // 2 else spec.cut_to
        img = Image.fromarray(_photo(name))
        t = i / max(1, spec.frames - 1)
        box = _window(img.height, img.width, spec.kind, t)
        out.append(np.asarray(img.resize((spec.size, spec.size), Image.BILINEAR, box=box)))
    return np.stack(out)


KINDS = ("pan_right", "pan_down", "pan_diag", "zoom_in", "zoom_out")


def clip_set(photos: list[str], frames: int = 16, size: int = 64, cuts: bool = False) -> list[ClipSpec]:
    """Every photo with every motion kind; with `cuts`, one extra clip per photo that cuts to the next photo."""
    specs = [ClipSpec(p, k, frames, size) for p in photos for k in KINDS]
    if cuts and len(photos) > 1:
        specs += [ClipSpec(p, "pan_right", frames, size, photos[(i + 1) % len(photos)]) for i, p in enumerate(photos)]
    return specs


def write_clips(out_dir: str | Path, specs: list[ClipSpec], fps: int = 25) -> list[Path]:
    from .synthetic import write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in specs:
        name = f"{s.photo}_{s.kind}" + (f"_cut_{s.cut_to}" if s.cut_to else "") + f"_{s.size}.mp4"
        paths.append(write_video(out / name, render_clip(s), fps=fps,
                                 options={"preset": "veryfast", "crf": "4"}))
    return paths


__all__ = ["ClipSpec", "KINDS", "clip_set", "render_clip", "write_clips"]
