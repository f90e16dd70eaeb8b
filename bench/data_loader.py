"""Data loader throughput (frames/s) for the two loads the quickstart and video training put on it.

    python bench/data_loader.py [--batches 20] [--workers 0 2] [--gop 30]

1. video: 256×256 crops of 8-frame clips (random start, random crop, flip) from 720p H.264 files;
2. images: 64×64 crops of 640×480 JPEG photos;
3. the quickstart's data (configs/quickstart.yaml): scikit-image sample photos (in memory, up to 1411×1411),
   shorter side → 128, random 64×64 crops, flips, batch 8.
Files are synthesised into a temporary folder first (not timed). The first batch of each run (worker start-up,
file probing) is excluded; frames/s = timed batches × batch size × frames per sample / seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from vqforge.config.schema import DataConfig
from vqforge.data import build_train_stream
from vqforge.data.synthetic import moving_frames, write_image, write_video


def make_videos(d: Path, n: int, frames: int, gop: int) -> Path:
    out = d / "videos"
    out.mkdir()
    for i in range(n):
        write_video(out / f"clip{i}.mp4", moving_frames(frames, 720, 1280, seed=i), fps=30, gop=gop,
                    options={"preset": "veryfast", "crf": "23"})
    return out


def make_images(d: Path, n: int) -> Path:
    out = d / "images"
    out.mkdir()
    for i in range(n):
        write_image(out / f"photo{i}.jpg", next(moving_frames(1, 480, 640, seed=i)), quality=90)
    return out


def measure(cfg: DataConfig, batches: int) -> tuple[float, float]:
    """(frames per wall-clock second, frames per CPU-second of this process)."""
    stream = build_train_stream(cfg, seed=0, pin_memory=False)
    next(stream)  # start-up excluded
    t, c = time.perf_counter(), time.process_time()
    for _ in range(batches):
        b = next(stream)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    stream.close()
    frames = batches * b.shape[0] * b.shape[1]
    return frames / dt, frames / max(dc, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--videos", type=int, default=4, help="720p files to synthesise")
    ap.add_argument("--frames", type=int, default=60, help="frames per video")
    ap.add_argument("--gop", type=int, default=30, help="keyframe interval of the synthesised videos")
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        vids = make_videos(Path(tmp), args.videos, args.frames, args.gop)
        imgs = make_images(Path(tmp), args.images)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"synthesised {args.videos} × {args.frames} frames 1280×720 H.264 (keyframe every {args.gop}) and "
              f"{args.images} 640×480 JPEGs in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs, load average {load:.1f}")
        loads = {
            "720p h264 → 8×256×256, batch 4": DataConfig(train=[str(vids)], sequence_length=8, resolution=256,
                                                         batch_size=4, hflip=True),
            "640×480 jpeg → 64×64, batch 32": DataConfig(train=[str(imgs)], resolution=64, batch_size=32,
                                                         hflip=True),
            "quickstart: photos → 64×64, batch 8": DataConfig(source="sample_photos", resolution=64, resize=128,
                                                              batch_size=8, hflip=True),
        }
        rows = []
        for name, cfg in loads.items():
            for w in args.workers:
                cfg.num_workers = w
                rows.append((name, w, *measure(cfg, args.batches)))
        # frames per CPU-second counts the loading process only, so it is shown for 0 workers (with workers the
        # work happens elsewhere); it does not depend on how busy the machine is
        n = max(len(r[0]) for r in rows)
        print(f"\n| {'load':<{n}} | workers | frames/s | frames per CPU-s |\n|{'-' * (n + 2)}|---------|----------|"
              f"------------------|")
        for name, w, fps, cpu_fps in rows:
            cpu = f"{cpu_fps:>16.0f}" if w == 0 else f"{'-':>16}"
            print(f"| {name:<{n}} | {w:>7} | {fps:>8.0f} | {cpu} |")


if __name__ == "__main__":
    main()
