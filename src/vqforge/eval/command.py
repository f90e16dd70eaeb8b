"""`vqforge eval`, `vqforge encode` and `vqforge decode`.

Preprocessing (eval and encode): every image or video frame is resized so that its shorter side is S and
center-cropped to R x R (no flip). Without --resolution, R and S are the model's training values
(`data.resolution`, `data.resize`), i.e. the run's own validation preprocessing; with --resolution R, S = R.

Eval data are read through `vqforge.data.build_val_loader`: an image is one sample; a video gives one clip of
`data.sequence_length` frames (every `frame_stride`-th) from its middle when all inputs are videos, else one frame;
every frame is evaluated as an image.

Indices files (`encode` writes, `decode` reads):
- `.safetensors`: tensor "indices" (N, h, w) or (N, D, h, w) for residual VQ, or "indices_l{i}" (N, h_i, w_i) per
  level for hierarchical models (coarsest first), int32; metadata key "vqforge" holds the JSON below.
- `.npy`: the single index tensor (int32), and the JSON metadata in a sidecar file next to it (`<name>.json`).
  Hierarchical models need .safetensors (their levels have different sizes).
Metadata: format/version, model identity (family, variant, sha256 of the architecture fields of the config, sha256 of
the weights, the path given), layout, codebook sizes, depth, input shape (N, C, H, W), frame count, and one entry per
source file (name, kind, first frame, frame count, fps for videos). N counts frames: an image is one, a video all of
its frames, in input order.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..config.parse import to_dict
from ..config.schema import HIERARCHICAL_FAMILIES, Config
from ..errors import CheckpointError, ConfigError, DataError
from .codebook import index_layout, split_levels
from .evaluator import EvalResult, codebook_sizes, evaluate
from .metrics import to_uint8
from .report import format_table, plot_rate_distortion, plot_usage_histogram, save_labelled_grid

INDICES_FORMAT = "vqforge-indices"
INDICES_VERSION = 1
ENCODE_BATCH = 8  # frames per model call in encode/decode
DEFAULT_FPS = 25
MP4_OPTIONS = {"preset": "medium", "crf": "16"}


# --- shared helpers --------------------------------------------------------------------------------------------------
def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank())
    return torch.device("cpu")


def _load_model(path: str, ema: bool = False) -> tuple[nn.Module, Config]:
    from ..models.pretrained import load_any

    model, cfg = load_any(path, ema=ema, map_location=_device())
    return model.eval(), cfg


def crop_sizes(resolution: int | None, cfg: Config) -> tuple[int, int]:
    """(shorter side S, crop R): the training values without --resolution, else (R, R)."""
    if resolution is None:
        r = cfg.data.resolution
        return (cfg.data.resize if cfg.data.resize is not None else r), r
    if resolution < 8:
        raise ConfigError("--resolution", f"must be >= 8, got {resolution}", "use e.g. 256")
    return resolution, resolution


def _check_resolution(size: int, cfg: Config) -> None:
    f = (cfg.model.arch.total_downsample if cfg.model.family in HIERARCHICAL_FAMILIES
         else cfg.model.dalle_vqvae.downsample_factor if cfg.model.family == "dalle_vqvae"
         else cfg.model.ddconfig.downsample_factor)
    if size % f:
        raise ConfigError("--resolution", f"{size} is not divisible by the model's downsampling factor {f}",
                          f"use a multiple of {f}, e.g. {max(f, size - size % f)}")


def architecture_hash(cfg: Config) -> str:
    """sha256 of the config fields that decide what an index means (architecture and codebook layout)."""
    m = cfg.model
    fields = {"family": m.family, "variant": m.variant}
    if m.family in HIERARCHICAL_FAMILIES:
        fields[m.family] = to_dict(m.arch)
    elif m.family == "dalle_vqvae":
        fields["dalle_vqvae"] = to_dict(m.dalle_vqvae)
    else:
        fields.update(n_embed=m.n_embed, embed_dim=m.embed_dim, ddconfig=to_dict(m.ddconfig),
                      rvq_levels=m.quantizer.rvq_levels, shared_codebook=m.quantizer.shared_codebook)
        if m.variant == "PQEMAVQ":
            fields["num_subspaces"] = m.quantizer.num_subspaces
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def weights_hash(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model: nn.Module, cfg: Config, source: str) -> dict:
    return {"family": cfg.model.family, "variant": cfg.model.variant, "config_sha256": architecture_hash(cfg),
            "weights_sha256": weights_hash(model), "source": source}


def _progress(total: int | None, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)  # disable=None: off when not a TTY


# --- eval ------------------------------------------------------------------------------------------------------------
def _lpips_for(vgg: str | None, cfg: Config) -> tuple[nn.Module | None, str | None]:
    """LPIPS network, or (None, reason). An explicitly given file must load; otherwise weights are only used
    when already on disk (no download during evaluation)."""
    from ..losses import vgg as vgg_mod
    from ..losses.perceptual import build_lpips

    if vgg is not None:
        return build_lpips(vgg), None
    if cfg.loss.vgg_path and Path(cfg.loss.vgg_path).is_file():
        return build_lpips(cfg.loss.vgg_path), None
    if os.environ.get(vgg_mod.VGG16_ENV) or vgg_mod.hub_cache_path().is_file():
        return build_lpips(None), None
    return None, (f"LPIPS skipped: no VGG16 ImageNet weights (pass --vgg {vgg_mod.VGG16_FILENAME}, set "
                  f"${vgg_mod.VGG16_ENV}, or place the file at {vgg_mod.hub_cache_path()})")


def _eval_data_config(cfg: Config, data: list[str], short: int, size: int, batch_size: int,
                      max_images: int | None) -> object:
    from ..data import media_kind, resolve_sources

    files = resolve_sources(data, "--data")
    all_videos = all(media_kind(f) == "video" for f in files)
    seq = cfg.data.sequence_length if all_videos else 1
    stride = cfg.data.frame_stride if all_videos else 1
    max_samples = None if max_images is None else max(1, -(-max_images // seq))
    return dataclasses.replace(
        cfg.data, source="files", val=list(data), train=[], use_images=False, sequence_length=seq,
        frame_stride=stride, resolution=size, resize=short if short != size else None, random_crop=False,
        hflip=False, batch_size=batch_size, val_batch_size=batch_size, max_val_samples=max_samples,
    )


def _print_report(res: EvalResult) -> None:
    print(metrics_table(res))
    print()
    print(format_table([[s.level, s.num_codes, s.used, s.dead, s.usage, s.perplexity, s.entropy_bits]
                        for s in res.codebook],
                       ["level", "K", "used", "dead", "usage", "perplexity", "bits/token"]))
    if res.depth_curve:
        print()
        print(format_table([[p.depth, p.bpp, p.psnr, p.ssim, p.lpips] for p in res.depth_curve],
                           ["depth", "bpp", "psnr", "ssim", "lpips"]))
    for name, why in res.skipped.items():
        print(f"{name}: {why}")


def metrics_table(res: EvalResult) -> str:
    """The metric table; with baselines, one column per baseline scored on the same images beside the model's."""
    keys = [("psnr (dB)", "psnr"), ("psnr aggregate (dB)", "psnr_aggregate"), ("ssim", "ssim"), ("lpips", "lpips"),
            ("rfid", "rfid"), (f"rec_loss ({res.pixel_loss})", "rec_loss"), ("bits per pixel", "bpp")]
    rows: list[list[object]] = [["images", res.num_images, *[""] * len(res.baselines)],
                                ["resolution", f"{res.height}x{res.width}", *[""] * len(res.baselines)]]
    for label, k in keys:
        rows.append([label, getattr(res, k), *[getattr(b, k) for b in res.baselines]])
    if any(b.jpeg_quality is not None for b in res.baselines):
        rows.append(["jpeg quality (mean)", "", *[b.jpeg_quality if b.jpeg_quality is not None else ""
                                                   for b in res.baselines]])
    table = format_table(rows, ["metric", "model", *[b.name for b in res.baselines]])
    if res.baselines:
        table += "\nbaselines on the same images: " + "; ".join(f"{b.name} = {b.method}" for b in res.baselines)
        table += ("\n(bicubic: 24 bits per kept pixel, uncompressed; JPEG: entropy-coded bits, headers excluded, "
                  "quality per image by bisection)")
    return table


def eval_main(args: argparse.Namespace) -> int:
    """Evaluate MODEL on --data; print a table, write metrics JSON and the report PNGs.

    Under torchrun every process evaluates its shard of the data; rank 0 prints and writes the results.
    """
    dist.setup()
    try:
        return _eval(args)
    finally:
        dist.teardown()


def _eval(args: argparse.Namespace) -> int:
    from ..data import build_val_loader, to_model_input
    from .fid import load_inception

    if args.max_images is not None and args.max_images < 1:
        raise ConfigError("--max-images", f"must be >= 1, got {args.max_images}", "leave it out to use every image")
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1, got {args.batch_size}", "use e.g. 8")
    model, cfg = _load_model(args.model, ema=args.ema)
    short, size = crop_sizes(args.resolution, cfg)
    _check_resolution(size, cfg)
    out_dir = Path(args.out) if args.out else (Path(args.json).parent if args.json else Path("eval"))
    json_path = Path(args.json) if args.json else out_dir / "metrics.json"

    data_cfg = _eval_data_config(cfg, args.data, short, size, args.batch_size, args.max_images)
    loader = build_val_loader(data_cfg, rank=dist.rank(), world_size=dist.world_size())
    if loader is None:
        raise DataError(f"no evaluation data found in {args.data}\n  fix: pass image/video files, folders or globs")
    skipped: dict[str, str] = {}
    lpips, why = _lpips_for(args.vgg, cfg)
    if why:
        skipped["lpips"] = why
    inception, why = load_inception(args.inception, device=_device())
    if why:
        skipped["rfid"] = why
    if lpips is not None:
        lpips = lpips.to(_device())

    def batches() -> Iterator[torch.Tensor]:
        for b in loader:
            yield to_model_input(b)  # (B·D, C, H, W) in [-1, 1]

    res = evaluate(model, batches(), lpips=lpips, inception=inception, max_images=args.max_images,
                   pixel_loss=cfg.loss.pixel_loss, skipped=skipped, progress=True,
                   baselines=not getattr(args, "no_baselines", False))
    if not dist.is_main():
        return 0
    _print_report(res)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"reconstructions": "reconstructions.png", "codebook_usage": "codebook_usage.png"}
    save_labelled_grid(res.sample_inputs, res.sample_reconstructions, out_dir / files["reconstructions"],
                       title=f"{args.model}: first {res.sample_inputs.shape[0]} of {res.num_images} images")
    plot_usage_histogram(res.usage_counts, out_dir / files["codebook_usage"])
    if res.depth_curve:
        files["rate_distortion"] = "rate_distortion.png"
        plot_rate_distortion([p.bpp for p in res.depth_curve], [p.psnr for p in res.depth_curve],
                             out_dir / files["rate_distortion"])
    doc = res.to_json()
    doc["model"] = {"family": cfg.model.family, "variant": cfg.model.variant,
                    "config_sha256": architecture_hash(cfg), "source": str(args.model), "ema": bool(args.ema)}
    doc["data"] = {"inputs": list(args.data), "resolution": size, "shorter_side": short,
                   "skipped_files": loader.skipped_files}
    doc["images"] = {k: str(out_dir / v) for k, v in files.items()}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {json_path} and {', '.join(doc['images'].values())}")
    return 0


# --- encode ----------------------------------------------------------------------------------------------------------
def _video_frames(path: Path) -> tuple[Iterator, float | None]:
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


def _input_frames(files: list[Path], short: int, size: int, sources: list[dict]) -> Iterator[np.ndarray]:
    """(size, size, 3) uint8 center crops of every input frame, in order; fills `sources` as it goes."""
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
            it, fps = _video_frames(f)
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


def _to_input(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    # (n, H, W, 3) uint8 -> (n, 3, H, W) in [-1, 1], the same mapping as vqforge.data.to_model_input
    x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)
    return x.float().div(127.5).sub(1.0).contiguous()


@torch.no_grad()
def encode_frames(model: nn.Module, frames: Iterator[np.ndarray], batch_size: int = ENCODE_BATCH,
                  progress: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """(H, W, 3) uint8 frames -> indices of all of them: (N, h, w), (N, D, h, w) or a list of per-level maps."""
    device = next(model.parameters()).device
    parts: list[torch.Tensor | list[torch.Tensor]] = []
    bar = _progress(None, "encode", "frame") if progress else None
    for chunk in _batched(frames, batch_size):
        idx = model.encode(_to_input(chunk, device))
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


def _index_dtype(num_codes: list[int]) -> torch.dtype:
    if max(num_codes) > 2**31 - 1:
        raise ValueError("codebook too large for int32 indices")
    return torch.int32


def save_indices(path: str | Path, indices: torch.Tensor | list[torch.Tensor], meta: dict) -> list[Path]:
    """Write an indices file (.safetensors, or .npy + .json sidecar); returns the files written."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = _index_dtype(meta["num_codes"])
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if isinstance(indices, (list, tuple)):
            tensors = {f"indices_l{i}": t.to(dtype).contiguous() for i, t in enumerate(indices)}
        else:
            tensors = {"indices": indices.to(dtype).contiguous()}
        save_file(tensors, str(path), metadata={"format": INDICES_FORMAT, "vqforge": json.dumps(meta)})
        return [path]
    if suffix == ".npy":
        if isinstance(indices, (list, tuple)):
            raise ConfigError("--out", "this model is hierarchical: its index maps have different sizes per level "
                              "and do not fit one .npy array", "write a .safetensors file instead")
        sidecar = path.with_suffix(".json")
        np.save(path, indices.to(dtype).numpy())
        sidecar.write_text(json.dumps(meta, indent=2) + "\n")
        return [path, sidecar]
    raise ConfigError("--out", f"unknown indices file type {path.suffix or '(none)'!r}",
                      "end the file name with .safetensors or .npy")


def load_indices(path: str | Path) -> tuple[torch.Tensor | list[torch.Tensor], dict]:
    """Read an indices file written by `save_indices` -> (int64 indices, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: does not exist\n  fix: pass the file written by `vqforge encode`")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {})
                keys = list(f.keys())
                tensors = {k: f.get_tensor(k) for k in keys}
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise DataError(f"{path}: not a readable safetensors file ({e})\n  fix: re-run `vqforge encode`") from e
        if raw_meta.get("format") != INDICES_FORMAT or "vqforge" not in raw_meta:
            raise DataError(f"{path}: not a vqforge indices file (no '{INDICES_FORMAT}' metadata)\n"
                            "  fix: pass a file written by `vqforge encode`")
        meta = json.loads(raw_meta["vqforge"])
        if "indices" in tensors:
            return tensors["indices"].long(), meta
        levels = sorted((k for k in tensors if k.startswith("indices_l")), key=lambda k: int(k[len("indices_l"):]))
        if not levels:
            raise DataError(f"{path}: holds no 'indices' tensor\n  fix: re-run `vqforge encode`")
        return [tensors[k].long() for k in levels], meta
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})\n  fix: re-run `vqforge encode`") from e
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
        else:
            warnings.warn(f"{sidecar} is missing: decoding without metadata (frames are named by number, the "
                          "model is not checked)", stacklevel=2)
            meta = {}
        return torch.from_numpy(arr.astype(np.int64)), meta
    raise ConfigError("FILE", f"unknown indices file type {path.suffix or '(none)'!r}",
                      "pass the .safetensors or .npy file written by `vqforge encode`")


def encode_main(args: argparse.Namespace) -> int:
    """Images or videos -> token indices file."""
    from ..data import resolve_sources

    model, cfg = _load_model(args.model)
    short, size = crop_sizes(args.resolution, cfg)
    _check_resolution(size, cfg)
    out = Path(args.out)
    if out.suffix.lower() not in (".safetensors", ".npy"):
        raise ConfigError("--out", f"unknown indices file type {out.suffix or '(none)'!r}",
                          "end the file name with .safetensors or .npy")
    if out.suffix.lower() == ".npy" and cfg.model.family in HIERARCHICAL_FAMILIES:
        raise ConfigError("--out", "this model is hierarchical: its index maps have different sizes per level "
                          "and do not fit one .npy array", "write a .safetensors file instead")
    files = resolve_sources(list(args.inputs), "INPUT")
    sources: list[dict] = []
    indices = encode_frames(model, _input_frames(files, short, size, sources), progress=True)
    n = sum(s["frames"] for s in sources)
    levels = split_levels(indices)
    ks = codebook_sizes(model)
    layout = index_layout(indices)
    in_ch = (cfg.model.arch.in_channels if cfg.model.family in HIERARCHICAL_FAMILIES
             else cfg.model.dalle_vqvae.input_channels if cfg.model.family == "dalle_vqvae"
             else cfg.model.ddconfig.in_channels)
    meta = {
        "format": INDICES_FORMAT, "version": INDICES_VERSION,
        "model": model_identity(model, cfg, str(args.model)),
        "layout": layout, "num_codes": ks, "depth": len(levels) if layout == "residual" else 1,
        "levels": len(levels), "index_shapes": [list(m.shape[1:]) for m in levels],
        "input_shape": [n, in_ch, size, size], "frame_count": n, "resolution": size, "shorter_side": short,
        "sources": sources,
    }
    written = save_indices(out, indices, meta)
    shapes = ", ".join("x".join(map(str, m.shape[1:])) for m in levels)
    print(f"encoded {n} frames from {len(sources)} files -> {len(levels)} level(s) of {shapes} tokens; "
          f"wrote {', '.join(map(str, written))}")
    return 0


# --- decode ----------------------------------------------------------------------------------------------------------
def _check_model_matches(meta: dict, model: nn.Module, cfg: Config, file: Path) -> None:
    ident = meta.get("model")
    if not ident:
        return
    if ident.get("config_sha256") != architecture_hash(cfg):
        raise CheckpointError(
            f"{file}: was encoded by a different model architecture ({ident.get('family')}/{ident.get('variant')} "
            f"from {ident.get('source')!r}); its indices mean nothing to this model\n"
            f"  fix: decode with the model that encoded it ({ident.get('source')})")
    if ident.get("weights_sha256") and ident["weights_sha256"] != weights_hash(model):
        warnings.warn(f"{file}: was encoded with other weights of the same architecture ({ident.get('source')!r}); "
                      "decoding anyway", stacklevel=2)


@torch.no_grad()
def decode_frames(model: nn.Module, indices: torch.Tensor | list[torch.Tensor], depth: int | None = None,
                  batch_size: int = ENCODE_BATCH, progress: bool = False) -> Iterator[np.ndarray]:
    """Indices -> (n, H, W, 3) uint8 frame batches, quantized like `metrics.to_uint8`.

    depth: residual VQ only, decode the first `depth` levels.
    """
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
    n = indices[0].shape[0] if isinstance(indices, (list, tuple)) else indices.shape[0]
    bar = _progress(n, "decode", "frame") if progress else None
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


def _fps_fraction(fps: float | None) -> Fraction:
    return Fraction(fps).limit_denominator(1001) if fps else Fraction(DEFAULT_FPS)


def write_mp4(path: str | Path, frames: Iterator[np.ndarray], fps: float | None = None) -> int:
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
                stream = c.add_stream("libx264", rate=_fps_fraction(fps))
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


def _unique_names(sources: list[dict]) -> list[str]:
    # stems of the source files; repeated stems get _1, _2, ...
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
    """Indices file -> PNGs in a directory, or an MP4 (when --out ends with .mp4 or per video source)."""
    model, cfg = _load_model(args.model)
    file = Path(args.file)
    indices, meta = load_indices(file)
    _check_model_matches(meta, model, cfg, file)
    frames = _frames_flat(decode_frames(model, indices, depth=args.depth, progress=True))
    out = Path(args.out)
    sources: list[dict] = meta.get("sources") or []
    n = indices[0].shape[0] if isinstance(indices, (list, tuple)) else indices.shape[0]
    if sum(s.get("frames", 0) for s in sources) != n:
        sources = []  # no (consistent) metadata: number the frames
    from PIL import Image

    if out.suffix.lower() == ".mp4":
        fps = next((s.get("fps") for s in sources if s.get("kind") == "video"), None)
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
    for name, s in zip(_unique_names(sources), sources):
        if s["kind"] == "video":
            path = out / f"{name}.mp4"
            write_mp4(path, (next(frames) for _ in range(s["frames"])), s.get("fps"))
        else:
            path = out / f"{name}.png"
            Image.fromarray(next(frames)).save(path)
        written.append(path)
    print(f"wrote {len(written)} files to {out}")
    return 0
