"""Per-depth PSNR of the user's residual VQ (one shared EMA codebook, prefix loss) with and without random-depth
training (`model.quantizer.quantize_dropout`), on held-out photos.

Both runs use the same network, data stream, seed, optimizer and step count; only quantize_dropout differs
(0: every step decodes all D depths, as the user's system trained; 1: every step decodes a random prefix depth
d ~ U{1..D}). Each is trained with `vqforge train` on the bundled sample photos (six training photos, random crops),
then `vqforge eval` decodes every depth prefix 1..D of the two held-out photos (coffee, chelsea; never seen in
training), center-cropped to --eval-resolution.

    PYTHONPATH=src python bench/rvq_depth_dropout.py [--steps 400] [--out bench/results/rvq_depth_dropout.json]

CPU-sized (f4 VQGAN, ch 32, D 4, K 64, 32x32 crops): a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def config(steps: int, dropout: float) -> dict:
    return {
        "model": {
            "family": "taming", "variant": "EMAVQ", "n_embed": 64, "embed_dim": 16,
            "ddconfig": {"ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
                         "z_channels": 16, "resolution": 32, "dropout": 0.0},
            "quantizer": {"rvq_levels": 4, "shared_codebook": True, "rvq_loss": "prefix", "decay": 0.9,
                          "kmeans_init": True, "restart_unused_steps": 20, "quantize_dropout": dropout},
        },
        "loss": {"pixel_loss": "l1", "perceptual_weight": 0.0, "use_gan": False},
        "data": {"source": "sample_photos", "resolution": 32, "resize": 64, "hflip": True, "batch_size": 8},
        "train": {"num_steps": steps, "lr": 5e-4, "lr_schedule": "cosine", "warmup_steps": 20, "min_lr": 5e-5,
                  "save_interval": steps, "validation_interval": steps, "seed": 0},
        "log": {"every": 50, "progress": False, "tensorboard": False},
    }


def write_held_out(dir_: Path) -> list[str]:
    from PIL import Image

    from vqforge.data.samples import SAMPLE_PHOTOS_VAL, sample_photo_split

    _, val = sample_photo_split()
    paths = []
    for name, arr in zip(SAMPLE_PHOTOS_VAL, val):
        p = dir_ / f"{name}.png"
        Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-resolution", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/rvq_depth_dropout.json")
    ap.add_argument("--settings", default="full_depth,quantize_dropout",
                    help="which runs (comma-separated); run them as separate processes to use more cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import yaml

    from vqforge.cli import main as cli

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        held_out = write_held_out(tmp_dir)
        wanted = args.settings.split(",")
        for name, p in (("full_depth", 0.0), ("quantize_dropout", 1.0)):
            if name not in wanted:
                continue
            cfg_path = tmp_dir / f"{name}.yaml"
            cfg_path.write_text(yaml.safe_dump(config(args.steps, p)))
            run = tmp_dir / name
            t0 = time.time()
            if cli(["train", str(cfg_path), "--out", str(run)]) != 0:
                raise SystemExit(f"training {name} failed")
            train_s = time.time() - t0
            report = tmp_dir / f"{name}_eval.json"
            if cli(["eval", str(run / "model"), "--data", *held_out, "--json", str(report), "--out",
                    str(tmp_dir / f"{name}_eval"), "--resolution", str(args.eval_resolution)]) != 0:
                raise SystemExit(f"evaluating {name} failed")
            doc = json.loads(report.read_text())
            curve = doc.get("depth_curve") or doc.get("metrics", {}).get("depth_curve")
            results[name] = {"quantize_dropout": p, "train_seconds": round(train_s, 1),
                             "depth_curve": [{"depth": c["depth"], "bpp": c["bpp"], "psnr": c["psnr"]} for c in curve]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "eval_resolution": args.eval_resolution, "runs": results},
                              indent=2) + "\n")
    print(f"\nheld-out PSNR (dB) per decoded depth, {args.steps} steps, {args.eval_resolution}x{args.eval_resolution}")
    names = list(results)
    print("depth  bpp     " + "  ".join(f"{n:>16}" for n in names))
    for points in zip(*(results[n]["depth_curve"] for n in names)):
        print(f"{points[0]['depth']:>5}  {points[0]['bpp']:<6.3f}  " + "  ".join(f"{p['psnr']:>16.2f}" for p in points))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
