"""Encode and decode throughput (images/s) of tokenizer models on CPU (or a GPU with --device cuda).

Models (random weights: speed does not depend on training):
- quickstart: `configs/examples/quickstart_vqgan.yaml` (the first quickstart) (EMA-VQ VQGAN, ch 64, ch_mult [1, 2, 2], 64x64 -> 16x16 tokens);
- f16: the taming VQGAN f16 config (ch 128, ch_mult [1, 1, 2, 2, 4], num_res_blocks 2, attn [16], z 256,
  embed_dim 256, n_embed 1024) at 256x256 -> 16x16 tokens.

encode = `model.encode(x)` (images -> indices), decode = `model.decode(indices)` (indices -> images), both in eval
mode under torch.inference_mode, batch 4 by default. Each measurement runs `--warmup` untimed calls, then `--iters`
timed calls; the median time per call gives images/s.

    .venv/bin/python bench/encode_decode.py [--models quickstart f16 --batch 4 --iters 3 --threads N --device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import vqforge
from vqforge.config.schema import Config, DDConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]


def quickstart_config() -> tuple[ModelConfig, int]:
    path = REPO / "configs" / "examples" / "quickstart_vqgan.yaml"
    if path.is_file():
        cfg = vqforge.load_config(path)
        return cfg.model, cfg.data.resolution
    # the same model, should the file be missing
    return ModelConfig(family="taming", variant="EMAVQ", n_embed=256, embed_dim=32,
                       ddconfig=DDConfig(ch=64, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[],
                                         z_channels=32, resolution=64)), 64


def f16_config() -> tuple[ModelConfig, int]:
    return ModelConfig(family="taming", variant="VQModel", n_embed=1024, embed_dim=256,
                       ddconfig=DDConfig(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
                                         z_channels=256, resolution=256)), 256


MODELS = {"quickstart": quickstart_config, "f16": f16_config}


def timed(fn, warmup: int, iters: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def bench_model(name: str, batch: int, warmup: int, iters: int, device: torch.device) -> dict:
    model_cfg, res = MODELS[name]()
    torch.manual_seed(0)
    model = vqforge.build_model(Config(model=model_cfg)).to(device).eval()
    x = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        idx = model.encode(x)
        enc = timed(lambda: model.encode(x), warmup, iters, sync)
        dec = timed(lambda: model.decode(idx), warmup, iters, sync)
    shape = [list(t.shape) for t in idx] if isinstance(idx, (list, tuple)) else list(idx.shape)
    return {
        "model": name, "resolution": res, "batch": batch,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "indices_shape": shape,
        "encode_s_per_batch": round(statistics.median(enc), 4),
        "decode_s_per_batch": round(statistics.median(dec), 4),
        "encode_images_per_s": round(batch / statistics.median(enc), 2),
        "decode_images_per_s": round(batch / statistics.median(dec), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(env))
    for name in args.models:
        print(json.dumps(bench_model(name, args.batch, args.warmup, args.iters, device)), flush=True)


if __name__ == "__main__":
    main()
