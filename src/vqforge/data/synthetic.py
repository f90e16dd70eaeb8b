"""Small synthetic videos and images for tests and benchmarks (written with PyAV and Pillow).

`index_level(i)` paints frame i a flat gray level that survives lossy coding, so a decoded frame tells which frame
it was (`level_index`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import av
import numpy as np
from PIL import Image

_LEVEL_STEP = 6  # 42 distinguishable levels; codecs keep flat gray within about ±1


def index_level(i: int) -> int:
    """Gray level that encodes frame index i (0 ≤ i < 42)."""
    if not 0 <= i < 256 // _LEVEL_STEP:
        raise ValueError(f"frame index {i} cannot be encoded as a gray level")
    return _LEVEL_STEP * i + _LEVEL_STEP // 2


def level_index(value: float) -> int:
    """Inverse of index_level (nearest)."""
    return int(round((float(value) - _LEVEL_STEP // 2) / _LEVEL_STEP))


def indexed_frames(n: int, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8: frame i is flat gray index_level(i)."""
    return np.stack([np.full((height, width, 3), index_level(i), np.uint8) for i in range(n)])


def moving_frames(n: int, height: int, width: int, seed: int = 0) -> Iterable[np.ndarray]:
    """n (H, W, 3) uint8 frames of a smooth pattern panning 3 px/frame right and 2 px/frame down, plus mild noise
    (a realistic load for a video codec). The pattern depends on `seed`."""
    rng = np.random.default_rng(seed)
    ph = rng.uniform(0, 2 * np.pi, 3)
    y = np.arange(height + 2 * n, dtype=np.float32)[:, None]
    x = np.arange(width + 3 * n, dtype=np.float32)[None, :]
    canvas = np.stack([  # (H + 2n, W + 3n, 3), computed once
        127 + 100 * np.sin(x / 37.0 + ph[0]) * np.cos(y / 53.0),
        127 + 100 * np.sin(y / 29.0 + ph[1]) * np.cos(x / 71.0),
        127 + 60 * np.cos((x + y) / 61.0 + ph[2]) + 40 * np.sin(x * y / 9000.0),
    ], axis=-1).astype(np.int16)
    noise = rng.integers(-6, 7, size=(3, height, width, 1), dtype=np.int16)
    for t in range(n):
        oy, ox = 2 * (n - 1 - t), 3 * (n - 1 - t)  # the view moves up-left, so the content moves down-right
        frame = canvas[oy:oy + height, ox:ox + width] + noise[t % 3]
        yield np.clip(frame, 0, 255).astype(np.uint8)


_CODECS = {
    ".mp4": ("libx264", {"preset": "veryfast", "crf": "12"}),
    ".mkv": ("libx264", {"preset": "veryfast", "crf": "12"}),
    ".mov": ("libx264", {"preset": "veryfast", "crf": "12"}),
    ".webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "12", "b": "0"}),
    ".avi": ("mpeg4", {"qscale": "2"}),
}


def write_video(path: str | Path, frames: Iterable[np.ndarray], *, fps: int = 25, gop: int | None = None,
                codec: str | None = None, options: dict[str, str] | None = None) -> Path:
    """Encode (H, W, 3) uint8 frames (even H and W) to `path`; codec and options default by extension
    (.mp4/.mkv/.mov: H.264, .webm: VP9, .avi: MPEG-4). gop = keyframe interval."""
    path = Path(path)
    default_codec, default_opts = _CODECS.get(path.suffix.lower(), ("libx264", {"preset": "veryfast"}))
    with av.open(str(path), "w") as c:
        stream = None
        for f in frames:
            if stream is None:
                stream = c.add_stream(codec or default_codec, rate=fps)
                stream.height, stream.width = f.shape[:2]
                stream.pix_fmt = "yuv420p"
                if gop is not None:
                    stream.codec_context.gop_size = gop
                stream.options = dict(default_opts if options is None else options)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(packet)
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            c.mux(packet)
    return path


def write_image(path: str | Path, array: np.ndarray, **save_kwargs) -> Path:
    """Save an (H, W, 3) or (H, W) uint8 array with Pillow (format from the extension)."""
    path = Path(path)
    Image.fromarray(array).save(path, **save_kwargs)
    return path
