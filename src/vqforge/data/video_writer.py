"""Writing frames to an MP4 file: H.264 (libx264, yuv420p, preset medium, CRF 16) through PyAV.

`vqforge decode` and `vqforge decompress` write decoded videos with it. The frame rate is the source video's when
known (as the nearest fraction with a denominator of at most 1001), else `DEFAULT_FPS`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ConfigError, DataError

DEFAULT_FPS = 25
MP4_OPTIONS = {"preset": "medium", "crf": "16"}


def fps_fraction(fps: float | None) -> Fraction:
    """The stream rate for `fps` frames per second (None or 0: DEFAULT_FPS)."""
    return Fraction(fps).limit_denominator(1001) if fps else Fraction(DEFAULT_FPS)


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float | None = None) -> int:
    """Write (H, W, 3) uint8 frames to an H.264 (libx264, yuv420p) MP4; returns the frame count."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), "w") as c:
        stream = None
        for f in frames:
            if stream is None:
                h, w = f.shape[:2]
                if h % 2 or w % 2:
                    raise ConfigError("--out", f"frames are {w}x{h}; yuv420p H.264 needs even sizes",
                                      "decode to a PNG directory instead")
                stream = c.add_stream("libx264", rate=fps_fraction(fps))
                stream.height, stream.width = h, w
                stream.pix_fmt = "yuv420p"
                stream.options = dict(MP4_OPTIONS)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(packet)
            count += 1
        if stream is None:
            raise DataError("no frames to write")
        for packet in stream.encode():
            c.mux(packet)
    return count
