"""Images and videos <-> `.vqf` files: the tokenizer's encode/decode around `coder`.

    from vqforge.codec import compress, decompress
    info = compress("runs/tok", "runs/entropy", ["clip.mp4"], "clip.vqf")
    result = decompress("runs/tok", "runs/entropy", "clip.vqf", out="clip_decoded.mp4")
    result.tokens   # (T, D, h, w) int64, exactly the tokenizer's indices
    result.frames   # (T, H, W, 3) uint8 reconstructions

Preprocessing is `vqforge encode`'s: shorter side resized to S and a center crop to R x R (the model's training
values, or --resolution R). Images are coded as independent (intra) frames; a video's frames are each conditioned
on the previous one, with an intra frame every `intra_period` frames.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..config.schema import Config
from ..entropy.base import EntropyModel, load_entropy_model
from .coder import DEFAULT_INTRA_PERIOD, Compressed, compress_tokens, decompress_tokens
from .container import CodecError, Header

def tokenizer_hash(model: nn.Module, cfg: Config) -> bytes:
    """SHA-256 (32 bytes) of the tokenizer: the hash of the config fields that give indices their meaning and the
    hash of the weights (the same two hashes `vqforge encode` records)."""
    from ..tokens.io import architecture_hash, weights_hash

    return hashlib.sha256(f"{architecture_hash(cfg)}:{weights_hash(model)}".encode()).digest()


def _tokenizer(tok) -> tuple[nn.Module, Config]:
    if isinstance(tok, tuple):
        return tok[0].eval(), tok[1]
    from ..models.pretrained import load_any

    model, cfg = load_any(tok, map_location="cpu")
    return model.eval(), cfg


def _entropy(ent) -> EntropyModel:
    if isinstance(ent, EntropyModel):
        return ent.eval()
    model, _ = load_entropy_model(ent, map_location="cpu")
    return model


def codebook_size(model: nn.Module, cfg: Config) -> int:
    if cfg.model.family == "vqvae2":
        raise CodecError("hierarchical (VQ-VAE-2) tokenizers are not supported by the codec: their levels have "
                         "different grids\n  fix: use a single-level or residual-VQ tokenizer (taming family)")
    return int(cfg.model.n_embed)


def _residual_tokens(indices: torch.Tensor, depth: int | None) -> torch.Tensor:
    """(N, h, w) or (N, D, h, w) -> (N, D', h, w) with D' = depth (residual VQ: the first `depth` levels)."""
    if isinstance(indices, (list, tuple)):
        raise CodecError("hierarchical (VQ-VAE-2) tokens are not supported by the codec\n"
                         "  fix: use a single-level or residual-VQ tokenizer (taming family)")
    x = indices[:, None] if indices.ndim == 3 else indices
    if depth is not None:
        if not 1 <= depth <= x.shape[1]:
            raise CodecError(f"--depth must be in 1..{x.shape[1]}, got {depth}\n"
                             f"  fix: use a depth from 1 to {x.shape[1]} (the tokenizer's residual levels)")
        x = x[:, :depth]
    return x.contiguous()


def encode_images(model: nn.Module, frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> the tokenizer's indices, (T, D, h, w) int64."""
    from ..tokens.frames import encode_frames

    return _residual_tokens(encode_frames(model, iter(list(frames))), None).long()


@torch.no_grad()
def decode_tokens(model: nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """(T, D, h, w) tokens -> (T, H, W, 3) uint8 reconstructions (a single-level model gets (T, h, w))."""
    from ..tokens.frames import decode_frames

    x = tokens[:, 0] if tokens.shape[1] == 1 and getattr(model, "depth", 1) == 1 else tokens
    return np.concatenate(list(decode_frames(model, x)))


def compress_frames(tokenizer, entropy_model, frames: np.ndarray, *, video: bool, fps: float | None = None,
                    depth: int | None = None, intra_period: int = DEFAULT_INTRA_PERIOD,
                    metadata: dict | None = None, adaptive: bool = True) -> tuple[Compressed, torch.Tensor]:
    """(T, H, W, 3) uint8 frames -> (Compressed, the tokens it holds (T, D, h, w)). adaptive: see
    `coder.compress_tokens`."""
    model, cfg = _tokenizer(tokenizer)
    ent = _entropy(entropy_model)
    k = codebook_size(model, cfg)
    tokens = _residual_tokens(encode_images(model, frames), depth)
    meta = {"resolution": int(frames.shape[1]), **(metadata or {})}
    c = compress_tokens(tokens, ent, tokenizer_hash(model, cfg), k, intra_period=intra_period, independent=not video,
                        fps=fps, metadata=meta, adaptive=adaptive)
    return c, tokens


def compress(tokenizer, entropy_model, inputs: Sequence[str | os.PathLike] | str | os.PathLike,
             out: str | os.PathLike | None = None, *, resolution: int | None = None, depth: int | None = None,
             intra_period: int = DEFAULT_INTRA_PERIOD, adaptive: bool = True) -> Compressed:
    """Images and/or videos -> one `.vqf` file (written to `out` when given). All inputs being images makes every
    frame intra; otherwise frames are coded in input order, each conditioned on the previous within a segment.
    adaptive: mix the entropy model with the segment's own token statistics (`adaptive`; the file records it)."""
    from ..data import resolve_sources
    from ..tokens.frames import crop_sizes, input_frames

    model, cfg = _tokenizer(tokenizer)
    short, size = crop_sizes(resolution, cfg)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = resolve_sources([str(p) for p in inputs], "INPUT")
    sources: list[dict] = []
    frames = np.stack(list(input_frames(files, short, size, sources)))
    video = any(s["kind"] == "video" for s in sources)
    fps = next((s.get("fps") for s in sources if s["kind"] == "video" and s.get("fps")), None)
    meta = {"shorter_side": short,
            "sources": [{"file": Path(s["file"]).name, "kind": s["kind"], "frames": s["frames"]} for s in sources]}
    c, _ = compress_frames((model, cfg), entropy_model, frames, video=video, fps=fps, depth=depth,
                           intra_period=intra_period, metadata=meta, adaptive=adaptive)
    if out is not None:
        write_file(out, c.data)
    return c


def write_file(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes so that readers see the old file or the complete new one (temp file, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


@dataclass
class Decompressed:
    tokens: torch.Tensor  # (T, D, h, w) int64
    frames: np.ndarray  # (T, H, W, 3) uint8
    header: Header
    written: list[Path]


def decompress(tokenizer, entropy_model, file: str | os.PathLike | bytes, out: str | os.PathLike | None = None,
               *, depth: int | None = None) -> Decompressed:
    """A `.vqf` file -> tokens and decoded frames; with `out`, also an MP4 (when it ends in .mp4) or a directory of
    PNGs (videos in the file become MP4s inside it). depth: decode with only the first `depth` residual levels."""
    model, cfg = _tokenizer(tokenizer)
    ent = _entropy(entropy_model)
    codebook_size(model, cfg)
    name = "<bytes>" if isinstance(file, (bytes, bytearray)) else str(file)
    if isinstance(file, (bytes, bytearray)):
        data = bytes(file)
    else:
        p = Path(file)
        if not p.is_file():
            raise CodecError(f"{p}: does not exist\n  fix: pass a file written by `vqforge compress`")
        data = p.read_bytes()
    tokens, header = decompress_tokens(data, ent, tokenizer_hash(model, cfg), name=name)
    frames = decode_tokens(model, _residual_tokens(tokens, depth))
    written = _write_output(out, frames, header) if out is not None else []
    return Decompressed(tokens=tokens, frames=frames, header=header, written=written)


def _write_output(out: str | os.PathLike, frames: np.ndarray, header: Header) -> list[Path]:
    from PIL import Image

    from ..data.video_writer import write_mp4
    from ..tokens.command import unique_names

    out = Path(out)
    fps = header.fps[0] / header.fps[1] if header.fps[1] else None
    if out.suffix.lower() == ".mp4":
        write_mp4(out, iter(frames), fps)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    sources = header.metadata.get("sources") or []
    if sum(s.get("frames", 0) for s in sources) != len(frames):
        sources = [{"file": f"frame_{i:05d}.png", "kind": "image", "frames": 1} for i in range(len(frames))]
    written, start = [], 0
    for name, s in zip(unique_names(sources), sources):
        n = s["frames"]
        if s["kind"] == "video":
            path = out / f"{name}.mp4"
            write_mp4(path, iter(frames[start:start + n]), fps)
        else:
            path = out / f"{name}.png"
            Image.fromarray(frames[start]).save(path)
        written.append(path)
        start += n
    return written
