"""What the quickstart can reach at 2 bits per pixel, before any training: two numbers that decide its design.

1. A context-free bound per token layout: k-means codebooks fitted on pixel patches of the quickstart's training
   stream (by default that of `configs/examples/quickstart_vqgan.yaml`, the first quickstart: all 10 photos),
   applied to its 8 validation crops. A patch of p x p pixels is one token; residual k-means stacks L codebooks
   of K codes (L*log2(K) / p^2 bits per pixel). A learned encoder/decoder should beat the bound of its layout; a
   layout whose bound is under the bicubic bar needs context to clear it.
2. The training FLOPs of one step (forward + backward, batch 8 at 64x64) for the candidate networks: on a 2-core CPU
   a step costs roughly FLOPs / 50 GFLOP/s, so this says how many steps fit in the quickstart's 10 minutes.

    PYTHONPATH=$PWD/src python bench/quickstart_analysis.py [--batches 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, H, W, C) -> (N * H/p * W/p, p*p*C)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p * c)


def unpatch(t: torch.Tensor, shape: tuple[int, ...], p: int) -> torch.Tensor:
    n, h, w, c = shape
    return t.reshape(n, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(shape)


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        a = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        n = torch.bincount(a, minlength=k).to(x.dtype)
        used = n > 0
        c[used] = sums[used] / n[used, None]
        c[~used] = x[torch.randint(len(x), (int((~used).sum()),), generator=g)]  # re-seed empty clusters
    return c


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR of images in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


def bounds(train: torch.Tensor, val: torch.Tensor, layouts, iters: int) -> list[dict]:
    rows = []
    for p, levels, k in layouts:
        rt, rv = patches(train, p), patches(val, p)
        qv = torch.zeros_like(rv)
        for lvl in range(levels):
            c = kmeans(rt, k, iters)
            rt = rt - c[torch.cdist(rt, c).argmin(1)]
            code = c[torch.cdist(rv, c).argmin(1)]
            qv, rv = qv + code, rv - code
            bpp = (lvl + 1) * math.log2(k) / (p * p)
            rows.append({"patch": p, "levels": lvl + 1, "K": k, "bpp": bpp,
                         "val_psnr": psnr(unpatch(qv, tuple(val.shape), p).flatten(1), val.flatten(1))})
            print(f"  {p}x{p} patches, {lvl + 1} x K={k}: {bpp:.2f} bpp, held-out PSNR {rows[-1]['val_psnr']:.2f} dB",
                  flush=True)
    return rows


def step_gflops() -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from vqforge.config.schema import DDConfig
    from vqforge.models import vqvae2
    from vqforge.models.taming_modules import Decoder, Encoder

    x = torch.randn(8, 3, 64, 64)
    nets = []
    for mult in ([1, 2], [1, 2, 2]):
        dd = DDConfig(ch=32, ch_mult=mult, num_res_blocks=1, attn_resolutions=[], z_channels=32, resolution=64,
                      dropout=0.0)
        nets.append((f"taming ch 32 ch_mult {mult} (f{2 ** (len(mult) - 1)})", Encoder(dd), Decoder(dd)))
    for hid in (64, 128):
        nets.append((f"VQ-VAE-2 level, hidden {hid} (f4)", vqvae2.Encoder(3, hid, 32, 2, 4),
                     vqvae2.Decoder(hid, hid, 3, 32, 2, 4)))
    from vqforge.models.patch import PatchDecoder, PatchEncoder

    nets.append(("patch family, 128 channels, 2 blocks per side (f4; configs/quickstart.yaml)",
                 PatchEncoder(3, 4, 128, 2), PatchDecoder(3, 4, 128, 2)))
    rows = []
    for name, enc, dec in nets:
        with FlopCounterMode(display=False) as counter:
            dec(enc(x)).mean().backward()
        rows.append({"network": name, "gflop_per_step": counter.get_total_flops() / 1e9})
        print(f"  {name}: {rows[-1]['gflop_per_step']:.1f} GFLOP per training step (batch 8, 64x64)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "examples" / "quickstart_vqgan.yaml"))
    ap.add_argument("--batches", type=int, default=60, help="training batches the k-means codebooks are fitted on")
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from vqforge.config import load_config
    from vqforge.data.loader import build_train_stream, build_val_loader

    cfg = load_config(args.config)
    stream = iter(build_train_stream(cfg.data, seed=0))
    r = cfg.data.resolution
    train = torch.cat([next(stream) for _ in range(args.batches)]).float().reshape(-1, r, r, 3) / 255
    val = torch.cat(list(build_val_loader(cfg.data))).float().reshape(-1, r, r, 3) / 255
    print(f"context-free k-means bound ({len(train)} training crops, {len(val)} held-out crops):")
    rows = bounds(train, val, [(2, 1, 256), (4, 4, 256)], args.iters)
    print("training cost per step:")
    flops = step_gflops()
    if args.json:
        Path(args.json).write_text(json.dumps({"bounds": rows, "flops": flops}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
