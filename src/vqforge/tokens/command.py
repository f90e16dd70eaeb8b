"""`vqforge encode` (images or videos -> an indices file) and `vqforge decode` (an indices file -> PNGs or MP4s).

The file format is `vqforge.tokens.io`; preprocessing and batching are `vqforge.tokens.frames`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from ..eval.codebook import index_layout, split_levels
from .frames import crop_sizes, decode_frames, encode_frames, input_frames, load_model, num_frames
from .io import (INDICES_FORMAT, INDICES_VERSION, check_indices_path, check_model_matches, load_indices,
                 model_identity, save_indices)


def encode_main(args: argparse.Namespace) -> int:
    """Images or videos -> token indices file."""
    from ..data import resolve_sources
    from ..eval.evaluator import codebook_sizes

    model, cfg = load_model(args.model, ema=args.ema, device=args.device)
    short, size = crop_sizes(args.resolution, cfg)
    out = Path(args.out)
    check_indices_path(out, cfg)
    files = resolve_sources(list(args.inputs), "INPUT")
    sources: list[dict] = []
    indices = encode_frames(model, input_frames(files, short, size, sources), batch_size=args.batch_size,
                            progress=True)
    n = sum(s["frames"] for s in sources)
    levels = split_levels(indices)
    layout = index_layout(indices)
    meta = {
        "format": INDICES_FORMAT, "version": INDICES_VERSION,
        "model": {**model_identity(model, cfg, str(args.model)), "ema": bool(args.ema)},
        "layout": layout, "num_codes": codebook_sizes(model), "depth": len(levels) if layout == "residual" else 1,
        "levels": len(levels), "index_shapes": [list(m.shape[1:]) for m in levels],
        "input_shape": [n, cfg.model.in_channels, size, size], "frame_count": n, "resolution": size,
        "shorter_side": short, "sources": sources,
    }
    written = save_indices(out, indices, meta)
    shapes = ", ".join("x".join(map(str, m.shape[1:])) for m in levels)
    print(f"encoded {n} frames from {len(sources)} files -> {len(levels)} level(s) of {shapes} tokens; "
          f"wrote {', '.join(map(str, written))}")
    return 0


def unique_names(sources: list[dict]) -> list[str]:
    """Stems of the source files; repeated stems get _1, _2, ..."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        stem = Path(s["file"]).stem
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        out.append(stem if k == 0 else f"{stem}_{k}")
    return out


def _frames_flat(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for b in batches:
        yield from b


def decode_main(args: argparse.Namespace) -> int:
    """Indices file -> PNGs in a directory, or an MP4 (when --out ends with .mp4 or per video source).

    --fps sets the frame rate of every MP4 written (default: the source video's, else 25).
    """
    from PIL import Image

    from ..data.video_writer import write_mp4

    if args.fps is not None and not args.fps > 0:
        raise ConfigError("--fps", f"must be > 0, got {args.fps}", "use e.g. 25, or leave it out for the source's")
    model, cfg = load_model(args.model, ema=args.ema, device=args.device)
    file = Path(args.file)
    indices, meta = load_indices(file)
    check_model_matches(meta, model, cfg, file)
    frames = _frames_flat(decode_frames(model, indices, depth=args.depth, batch_size=args.batch_size,
                                        progress=True))
    out = Path(args.out)
    sources: list[dict] = meta.get("sources") or []
    n = num_frames(indices)
    if sum(s.get("frames", 0) for s in sources) != n:
        sources = []  # no (consistent) metadata: number the frames

    if out.suffix.lower() == ".mp4":
        fps = args.fps or next((s.get("fps") for s in sources if s.get("kind") == "video"), None)
        count = write_mp4(out, frames, fps)
        print(f"wrote {count} frames to {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if not sources:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(out / f"frame_{i:05d}.png")
        print(f"wrote {n} PNGs to {out}")
        return 0
    written = []
    for name, s in zip(unique_names(sources), sources):
        if s["kind"] == "video":
            path = out / f"{name}.mp4"
            write_mp4(path, (next(frames) for _ in range(s["frames"])), args.fps or s.get("fps"))
        else:
            path = out / f"{name}.png"
            Image.fromarray(next(frames)).save(path)
        written.append(path)
    print(f"wrote {len(written)} files to {out}")
    return 0
