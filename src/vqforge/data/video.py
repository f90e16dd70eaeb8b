"""Video decoding with PyAV: probe a file's frame count, read a clip of frames decoding only what it needs.

Frame i of a video is the frame shown at time i / fps (fps = the stream's average frame rate). A clip is read by
seeking to the keyframe at or before its first frame and decoding forward until its last frame, so the cost is
(distance to the previous keyframe + clip span) frames, not the length of the file. Streams whose frames carry no
timestamps, or whose seek lands past the wanted frame, fall back to decoding from the start and counting frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image
from torch.utils.data import get_worker_info


class MediaError(Exception):
    """A file cannot be used: unreadable, not a video/image, or too short. The dataset skips such files."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # from the stream metadata, else estimated from duration × fps, else counted packets
    width: int
    height: int
    fps: float | None
    count_source: str  # "metadata" | "duration" | "packets"


@dataclass
class Clip:
    frames: list[Image.Image]  # RGB, `length` of them
    start: int  # index of the first frame actually returned (may move back if the file ends early)
    decoded: int  # frames the decoder produced to get them (cost; tests check that seeking works)


def _rate(stream) -> Fraction | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r:
            return Fraction(r)
    return None


def _open(path: str | Path):
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot open as video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise MediaError("has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's header: frame count, size and rate (no frame is decoded)."""
    with _open(path) as c:
        s = c.streams.video[0]
        width, height = s.codec_context.width, s.codec_context.height
        if width <= 0 or height <= 0:
            raise MediaError("video stream has no frame size")
        rate = _rate(s)
        n, source = int(s.frames or 0), "metadata"
        if n <= 0 and rate is not None:
            # WebM/MKV store no frame count; estimate from the duration. An overestimate is harmless: a clip that
            # runs into the real end of the file is moved back (see read_clip).
            seconds = None
            if s.duration is not None and s.time_base is not None:
                seconds = float(s.duration * s.time_base)
            elif c.duration is not None:
                seconds = c.duration / av.time_base
            if seconds is not None and seconds > 0:
                n, source = int(round(seconds * float(rate))), "duration"
        if n <= 0:
            # last resort: count packets without decoding them
            n = sum(1 for p in c.demux(s) if p.size > 0)
            source = "packets"
        return VideoInfo(n, width, height, float(rate) if rate else None, source)


def clip_span(length: int, stride: int) -> int:
    """Frames covered by a clip of `length` frames taken every `stride` frames."""
    return (length - 1) * stride + 1


@dataclass
class _Decoded:
    got: dict[int, Image.Image]  # wanted frames by index
    decoded: int  # frames the decoder produced
    end: int  # one past the last decoded frame's index
    reached: bool  # decoding got as far as the last wanted frame
    error: str  # the decoder error that stopped it early, or ""


class _SeekMissed(Exception):
    pass


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size after scaling the shorter side to `short_side` (the rounding vqforge.data.transforms uses too)."""
    s = short_side / min(width, height)
    return round(width * s), round(height * s)


def _to_image(frame: av.VideoFrame, short_side: int | None) -> Image.Image:
    """RGB image of a decoded frame, optionally scaled so its shorter side is `short_side`.

    Scaling happens inside libswscale's colour conversion (bicubic, like the Pillow path for images): one pass
    over a 720p frame instead of a full-size conversion followed by a Pillow resize, about half the time.
    """
    if short_side is None or min(frame.width, frame.height) == short_side:
        return frame.to_image()
    w, h = scaled_size(frame.width, frame.height, short_side)
    return frame.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_image()


def _decode(path: str | Path, wanted: list[int], seek: bool, short_side: int | None = None) -> _Decoded:
    """Decode the frames with indices in `wanted` (seeking first if `seek`, else from the start, counting frames).

    Raises _SeekMissed when seeking failed or landed past the first wanted frame, or frames carry no timestamps.
    """
    wanted_set = set(wanted)
    first, last = wanted[0], wanted[-1]
    out = _Decoded({}, 0, 0, False, "")
    with _open(path) as c:
        s = c.streams.video[0]
        # In the main process (num_workers 0) let FFmpeg decode on all cores (frame + slice threads); in a
        # DataLoader worker use slice threads only, since the workers already keep the cores busy. The decoded
        # pixels are the same either way.
        s.thread_type = "AUTO" if get_worker_info() is None else "SLICE"
        rate = _rate(s)
        tb = s.time_base
        t0 = s.start_time if s.start_time is not None else 0
        use_pts = seek and rate is not None and tb is not None
        if use_pts and first > 0:
            # pts of frame `first` (rounded down), then back to the keyframe at or before it
            try:
                c.seek(t0 + math.floor(Fraction(first) / (rate * tb)), stream=s, backward=True, any_frame=False)
            except av.FFmpegError as e:
                raise _SeekMissed(str(e)) from e
        try:
            for frame in c.decode(s):
                if use_pts:
                    if frame.pts is None:
                        raise _SeekMissed("frame without timestamp")
                    idx = round((frame.pts - t0) * tb * rate)
                    if out.decoded == 0 and idx > first:
                        raise _SeekMissed(f"seek landed at frame {idx}, after frame {first}")
                else:
                    idx = out.decoded
                out.decoded += 1
                out.end = max(out.end, idx + 1)
                if idx in wanted_set and idx not in out.got:
                    out.got[idx] = _to_image(frame, short_side)
                if idx >= last:
                    out.reached = True
                    break
        except (av.FFmpegError, EOFError) as e:
            # treated like the end of the file: a truncated file still yields the clips before the damage
            out.error = f"{type(e).__name__}: {e}"
    return out


def _decode_any(path: str | Path, wanted: list[int], short_side: int | None) -> _Decoded:
    try:
        d = _decode(path, wanted, True, short_side)
    except _SeekMissed:
        return _decode(path, wanted, False, short_side)
    if d.reached and len(d.got) < len(wanted):
        # timestamps skip some wanted indices (variable frame rate): count frames instead
        d2 = _decode(path, wanted, False, short_side)
        d2.decoded += d.decoded
        return d2
    return d


def read_clip(path: str | Path, start: int, length: int, stride: int = 1, short_side: int | None = None) -> Clip:
    """Decode `length` frames: start, start + stride, ... as RGB PIL images (shorter side scaled to
    `short_side` when given).

    If the file ends before the clip does (its frame count was overestimated, or the file is truncated), the clip
    moves back to end at the last decodable frame; if fewer frames than the clip's span decode, MediaError.
    """
    if length < 1 or stride < 1 or start < 0:
        raise ValueError(f"bad clip request start={start} length={length} stride={stride}")
    span = clip_span(length, stride)

    def wanted_from(s0: int) -> list[int]:
        return [s0 + stride * j for j in range(length)]

    wanted = wanted_from(start)
    d = _decode_any(path, wanted, short_side)
    decoded = d.decoded
    if len(d.got) == length:
        return Clip([d.got[i] for i in wanted], start, decoded)
    if d.decoded == 0:
        # nothing decoded after the seek (e.g. the keyframe lies in a truncated part): find the real end by
        # decoding from the start
        d = _decode(path, wanted, False, short_side)
        decoded += d.decoded
        if len(d.got) == length:
            return Clip([d.got[i] for i in wanted], start, decoded)
    end, error = d.end, d.error
    if end < span:
        why = f" (decoding stopped: {error})" if error else ""
        raise MediaError(f"has {end} decodable frames, fewer than the {span} a clip needs{why}")
    start = end - span  # the last clip that fits
    wanted = wanted_from(start)
    d = _decode_any(path, wanted, short_side)
    decoded += d.decoded
    if len(d.got) == length:
        return Clip([d.got[i] for i in wanted], start, decoded)
    raise MediaError(f"cannot decode frames {start}..{start + span - 1} ({d.error or 'frames missing'})")
