"""Tokenize training/validation media once and cache the tokens as safetensors shards.

Cache layout: `CACHE/<tokenizer hash[:16]>/<split>/index.json` + one shard per input file `00000.safetensors`
(tensor "tokens": (T, D, H, W) int32, T frames of that file in order). index.json records the full tokenizer hash,
the preprocessing, and each input file's path, size and modification time; the cache is reused only when all of
them match and recomputed otherwise (a retrained tokenizer has another hash, so it never reads stale tokens).

The tokenizer hash is SHA-256 over the architecture fields of its config, every weight, and the preprocessing
(shorter side, crop), so two tokenizers that would give different indices never share a cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import distributed as dist
from ..errors import ConfigError, DataError
from .base import FrameLayout
from .config import EntropyTokenizerConfig

CACHE_FORMAT = "vqforge-token-cache"
CACHE_VERSION = 1


@dataclass
class Tokenizer:
    model: nn.Module
    cfg: object  # vqforge Config
    source: str
    short: int  # shorter side the frames are resized to
    size: int  # center crop
    hash: str


@dataclass
class TokenSet:
    clips: list[torch.Tensor]  # each (T, D, H, W) int64
    files: list[str]
    layout: FrameLayout
    pixels_per_frame: int


def load_tokenizer(t: EntropyTokenizerConfig, device: torch.device | str = "cpu") -> Tokenizer:
    from ..models.pretrained import load_any
    from ..tokens.frames import crop_sizes
    from ..tokens.io import architecture_hash, weights_hash

    weights_dir = t.weights is not None and Path(t.weights).is_dir()
    if t.path is not None or weights_dir:
        source = t.path if t.path is not None else t.weights
        model, cfg = load_any(source, ema=t.ema, map_location=device)
        if weights_dir and t.config is not None:  # the config file must describe the model in that directory
            from ..config import load_config

            named = load_config(t.config)
            if architecture_hash(named) != architecture_hash(cfg):
                raise ConfigError("tokenizer.config", f"{t.config} describes another architecture than the "
                                  f"tokenizer in {t.weights}", "point both at the same tokenizer, or leave the "
                                  "config out (a vqforge directory carries its own)")
    else:
        if t.config is None:
            raise ConfigError("tokenizer.config", "tokenizer.weights is set without the config it was trained with",
                              "set tokenizer.config (vqgan.vq_config) to the tokenizer's config file")
        from ..config import load_config
        from ..models.pretrained import load_weights
        from ..models.registry import build as build_model

        cfg = load_config(t.config)
        model = build_model(cfg.model)
        load_weights(model, t.weights)
        model = model.to(device)
        source = f"{t.config} + {t.weights}"
    model.eval()
    if cfg.model.family == "vqvae2":
        raise ConfigError("tokenizer.path", "a hierarchical (VQ-VAE-2) tokenizer has index maps of different sizes "
                          "per level; entropy models code one (depth, rows, columns) grid per frame",
                          "use a single-level or residual-VQ tokenizer")
    short, size = crop_sizes(t.resolution, cfg)
    h = hashlib.sha256(json.dumps({"architecture": architecture_hash(cfg), "weights": weights_hash(model),
                                   "short": short, "size": size}, sort_keys=True).encode()).hexdigest()
    return Tokenizer(model, cfg, source, short, size, h)


def _signature(files: list[Path]) -> list[dict]:
    out = []
    for f in files:
        st = f.stat()
        out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _index_ok(index_file: Path, tok: Tokenizer, sig: list[dict]) -> bool:
    try:
        idx = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (idx.get("format") == CACHE_FORMAT and idx.get("version") == CACHE_VERSION
            and idx.get("tokenizer_hash") == tok.hash and idx.get("files") == sig
            and all((index_file.parent / s).is_file() for s in idx.get("shards", [])))


def _encode_file(tok: Tokenizer, f: Path) -> torch.Tensor:
    from ..tokens.frames import encode_frames, input_frames

    idx = encode_frames(tok.model, input_frames([f], tok.short, tok.size, []))
    if isinstance(idx, list):  # pragma: no cover - rejected in load_tokenizer
        raise DataError(f"{f}: hierarchical indices")
    if idx.ndim == 3:
        idx = idx[:, None]
    return idx.to(torch.int32)


def cached_tokens(tok: Tokenizer, paths: list[str], field: str, cache_root: Path, split: str,
                  log=print) -> TokenSet:
    """Tokens of every file of `paths` (files, folders, globs), from the cache when it is valid. Under several
    processes rank 0 tokenizes and the others wait, then everyone reads the same shards."""
    from safetensors.torch import load_file, save_file

    from ..data import resolve_sources
    from ..eval.evaluator import codebook_sizes

    files = resolve_sources(list(paths), field)
    sig = _signature(files)
    d = cache_root / tok.hash[:16] / split
    index_file = d / "index.json"
    if dist.is_main() and not _index_ok(index_file, tok, sig):
        log(f"tokenizing {len(files)} {split} file(s) with {tok.source} -> {d}")
        tmp = d.with_name(f".{split}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        shards = []
        for i, f in enumerate(files):
            name = f"{i:05d}.safetensors"
            save_file({"tokens": _encode_file(tok, f).contiguous()}, str(tmp / name))
            shards.append(name)
        (tmp / "index.json").write_text(json.dumps({
            "format": CACHE_FORMAT, "version": CACHE_VERSION, "tokenizer_hash": tok.hash,
            "tokenizer": tok.source, "short": tok.short, "size": tok.size, "files": sig, "shards": shards}, indent=1))
        if d.exists():
            shutil.rmtree(d)
        tmp.rename(d)
    elif dist.is_main():
        log(f"{split} tokens: reusing {d}")
    dist.barrier()
    idx = json.loads(index_file.read_text())
    clips = [load_file(str(d / s))["tokens"].long() for s in idx["shards"]]
    k = codebook_sizes(tok.model)
    if len(set(k)) != 1:
        raise ConfigError("tokenizer", f"residual levels have different codebook sizes {k}",
                          "use a tokenizer whose levels share one codebook size")
    _, D, H, W = clips[0].shape
    return TokenSet(clips, [s["path"] for s in sig], FrameLayout(D, H, W, k[0]), tok.size * tok.size)


def windows(clips: list[torch.Tensor], length: int, limit: int | None = None) -> list[tuple[int, int, int]]:
    """(clip, first frame, frames) of consecutive non-overlapping windows of `length` frames (a clip's last window
    may be shorter). The first frame of a window is coded intra, the others from their previous frame."""
    out = []
    for c, clip in enumerate(clips):
        t = clip.shape[0]
        out += [(c, s, min(length, t - s)) for s in range(0, t, length)]
    return out[:limit] if limit is not None else out


__all__ = ["Tokenizer", "TokenSet", "load_tokenizer", "cached_tokens", "windows"]
