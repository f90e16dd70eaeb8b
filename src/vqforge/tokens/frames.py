"""Frames in, tokens out, and back: the preprocessing and batching that `encode`, `decode`, `eval`, `compress` and
the entropy-model data share.

Preprocessing: every image or video frame is resized so that its shorter side is S and center-cropped to R x R (no
flip). Without --resolution, R and S are the model's training values (`data.resolution`, `data.resize`), i.e. the
run's own validation preprocessing; with --resolution R, S = R. R must be divisible by the model's downsampling
factor.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..config.schema import Config
from ..errors import ConfigError, DataError
from ..eval.codebook import Indices, index_layout
from ..images import from_uint8, to_uint8
from ..utils import resolve_device

ENCODE_BATCH = 8  # frames per model call in encode/decode (the commands' --batch-size default)


def load_model(path: str | Path, ema: bool = False, device: str = "auto") -> tuple[nn.Module, Config]:
    """(model in eval mode on `device`, Config) from an exported, checkpoint or run directory (--device, --ema)."""
    from ..models.pretrained import load_any

    model, cfg = load_any(path, ema=ema, map_location=resolve_device(device, "--device"))
    return model.eval(), cfg


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1, got {batch_size}", f"use e.g. {ENCODE_BATCH}")


def crop_sizes(resolution: int | None, cfg: Config) -> tuple[int, int]:
    """(shorter side S, crop R): the training values without --resolution, else (R, R); R is checked against the
    model's downsampling factor."""
    if resolution is None:
        r = cfg.data.resolution
        short = cfg.data.resize if cfg.data.resize is not None else r
    else:
        if resolution < 8:
            raise ConfigError("--resolution", f"must be >= 8, got {resolution}", "use e.g. 256")
        short = r = resolution
    cfg.model.check_resolution(r, "--resolution")
    return short, r


def progress_bar(total: int | None, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)  # disable=None: off when not a TTY


def video_frames(path: Path) -> tuple[Iterator, float | None]:
    """(iterator over RGB PIL frames, fps) of every frame of a video."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise DataError(f"{path}: cannot open as video ({e})\n  fix: check the file, or convert it to MP4") from e
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: has no video stream\n  fix: pass a video or image file")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate

    def frames():
        try:
            for frame in container.decode(stream):
                yield frame.to_image()
        except av.FFmpegError as e:
            raise DataError(f"{path}: decoding failed ({e})\n  fix: check the file, or re-encode it") from e
        finally:
            container.close()

    return frames(), (float(rate) if rate else None)


def input_frames(files: list[Path], short: int, size: int, sources: list[dict]) -> Iterator[np.ndarray]:
    """(size, size, 3) uint8 center crops of every input frame, in order; fills `sources` as it goes (one entry per
    file: file, kind, first frame, frame count, and fps for videos)."""
    from ..data import MediaError, load_image, media_kind, resize_crop
    from ..data.transforms import CENTER

    start = 0
    for f in files:
        kind = media_kind(f)
        if kind == "image":
            try:
                img = load_image(f, min_short_side=short)
            except MediaError as e:
                raise DataError(f"{f}: {e}\n  fix: remove the file from the inputs or repair it") from e
            sources.append({"file": str(f), "kind": "image", "start": start, "frames": 1})
            start += 1
            yield resize_crop(img, short, size, CENTER)
        elif kind == "video":
            it, fps = video_frames(f)
            entry = {"file": str(f), "kind": "video", "start": start, "frames": 0, "fps": fps}
            sources.append(entry)
            for img in it:
                entry["frames"] += 1
                start += 1
                yield resize_crop(img, short, size, CENTER)
            if entry["frames"] == 0:
                raise DataError(f"{f}: the video has no decodable frame\n  fix: check the file")
        else:
            raise ConfigError("INPUT", f"{str(f)!r} is neither an image nor a video (by its extension)",
                              "pass image or video files, folders or globs")


def _batched(frames: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == n:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


@torch.no_grad()
def encode_frames(model: nn.Module, frames: Iterator[np.ndarray], batch_size: int = ENCODE_BATCH,
                  progress: bool = False) -> Indices:
    """(H, W, 3) uint8 frames -> indices of all of them: (N, h, w), (N, D, h, w) or a list of per-level maps."""
    check_batch_size(batch_size)
    device = next(model.parameters()).device
    parts: list[torch.Tensor | list[torch.Tensor]] = []
    bar = progress_bar(None, "encode", "frame") if progress else None
    for chunk in _batched(frames, batch_size):
        x = from_uint8(torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2)).contiguous()  # (n, 3, H, W)
        idx = model.encode(x)
        parts.append([i.cpu() for i in idx] if isinstance(idx, (list, tuple)) else idx.cpu())
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if not parts:
        raise DataError("no frames to encode\n  fix: pass at least one image or video")
    if isinstance(parts[0], list):
        return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]  # type: ignore[index]
    return torch.cat(parts)  # type: ignore[arg-type]


def num_frames(indices: Indices) -> int:
    return indices[0].shape[0] if isinstance(indices, (list, tuple)) else indices.shape[0]


@torch.no_grad()
def decode_frames(model: nn.Module, indices: Indices, depth: int | None = None, batch_size: int = ENCODE_BATCH,
                  progress: bool = False) -> Iterator[np.ndarray]:
    """Indices -> (n, H, W, 3) uint8 frame batches, quantized like `vqforge.images.to_uint8`.

    depth: residual VQ only, decode the first `depth` levels.
    """
    check_batch_size(batch_size)
    device = next(model.parameters()).device
    layout = index_layout(indices)
    if depth is not None:
        if layout != "residual":
            raise ConfigError("--depth", f"applies to residual VQ models only; this model's indices are {layout}",
                              "leave --depth out")
        d_max = indices.shape[1]  # type: ignore[union-attr]
        if not 1 <= depth <= d_max:
            raise ConfigError("--depth", f"must be in 1..{d_max}, got {depth}", f"use a depth from 1 to {d_max}")
        indices = indices[:, :depth]  # type: ignore[index]
    n = num_frames(indices)
    bar = progress_bar(n, "decode", "frame") if progress else None
    for s in range(0, n, batch_size):
        if isinstance(indices, (list, tuple)):
            chunk = [t[s:s + batch_size].to(device) for t in indices]
        else:
            chunk = indices[s:s + batch_size].to(device)
        y = model.decode(chunk)  # (b, C, H, W)
        yield to_uint8(y).permute(0, 2, 3, 1).cpu().numpy()  # (b, H, W, 3)
        if bar is not None:
            bar.update(y.shape[0])
    if bar is not None:
        bar.close()
