"""`vqforge eval`: reconstruction quality, codebook usage and bits per pixel of a tokenizer on a data set.

Preprocessing is that of `vqforge.tokens.frames` (shorter side S, center crop R x R; the model's training values
without --resolution). Eval data are read through `vqforge.data.build_val_loader`: an image is one sample; a video
gives one clip of `data.sequence_length` frames (every `frame_stride`-th) from its middle when all inputs are videos,
else one frame; every frame is evaluated as an image.

--device picks the device (auto: this process's GPU, else the CPU); --precision runs the model (and LPIPS, rFID
features) under bf16 autocast or in fp32 (the default: metrics as exact as the weights allow); 'auto' is bf16 on
CUDA devices that support it. Metrics are always computed in float64 on 8-bit pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .. import distributed as dist
from ..config.schema import Config
from ..errors import ConfigError, DataError
from ..images import save_labelled_grid
from ..tokens.frames import check_batch_size, crop_sizes, load_model
from ..tokens.io import architecture_hash
from ..utils import autocast, resolve_precision
from .evaluator import EvalResult, evaluate
from .report import format_table, plot_rate_distortion, plot_usage_histogram


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
    check_batch_size(args.batch_size)
    model, cfg = load_model(args.model, ema=args.ema, device=args.device)
    device = next(model.parameters()).device
    precision = resolve_precision(args.precision, device)
    short, size = crop_sizes(args.resolution, cfg)
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
    inception, why = load_inception(args.inception, device=device)
    if why:
        skipped["rfid"] = why
    if lpips is not None:
        lpips = lpips.to(device)

    def batches() -> Iterator[torch.Tensor]:
        for b in loader:
            yield to_model_input(b)  # (B·D, C, H, W) in [-1, 1]

    with autocast(device, precision):
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
                    "config_sha256": architecture_hash(cfg), "source": str(args.model), "ema": bool(args.ema),
                    "device": str(device), "precision": precision}
    doc["data"] = {"inputs": list(args.data), "resolution": size, "shorter_side": short,
                   "skipped_files": loader.skipped_files}
    doc["images"] = {k: str(out_dir / v) for k, v in files.items()}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {json_path} and {', '.join(doc['images'].values())}")
    return 0
