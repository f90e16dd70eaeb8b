"""Entropy-decode time per 256x256 frame: this tree against a baseline revision, in one run, alternating.

What is timed: `decode_segment` of a 2-frame segment (an intra frame, then an inter frame) — every coding step's
`step_logits`, the integer-frequency function and constriction's range decoder — divided by the frame count. The
tokenizer's own decoder is not included. Token grids of 256x256 frames: f16 (1x16x16), f8 (1x32x32) and f4 with 3
residual levels (3x64x64 = 12288 tokens), K = 256. Synthetic tokens (a random frame and a copy with 10 % changed):
the time does not depend on what the tokens are.

Models (built from the same seed on both sides; the script checks that their hashes agree):
- `test-context`: the small few-pass test model of tests/codec_models.py (2 steps per depth);
- `masked_groups`: the few-pass Transformer at the size `bench/entropy.py` trains (d_model 128, 3 layers, 4 heads,
  6 cosine groups: 6 passes per depth);
- `masked_groups-p2`, `masked_groups-p4` (this tree only: the option is new): the same with `patch_size` 2 / 4.

Each (case, side) runs in its own process (PYTHONPATH = that side's src/), the order of the two sides alternating
from round to round; the table gives the median per-frame decode time and every run, and the 1-minute load average
around each run.

    PYTHONPATH=$PWD/src python bench/codec_decode_time.py [--baseline e2ad341] [--rounds 2] [--threads 2]
        [--cases test-context/f16 masked_groups/f4x3 ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRIDS = {"f16": (1, 16, 16), "f8": (1, 32, 32), "f4x3": (3, 64, 64)}
MODELS = ["test-context", "masked_groups", "masked_groups-p2", "masked_groups-p4"]
NEW_ONLY = {"masked_groups-p2", "masked_groups-p4"}
K = 256


def worker(case: str, frames: int, threads: int) -> None:
    import numpy as np  # noqa: F401
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import codec_models as cm

    from vqforge.codec import compress_tokens, decode_segment, read_header
    from vqforge.entropy import build_entropy_model, entropy_model_hash

    torch.set_num_threads(threads)
    model_name, grid = case.split("/")
    d, h, w = GRIDS[grid]
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, K, (d, h, w), generator=g)
    x = torch.stack([base] + [torch.where(torch.rand(d, h, w, generator=g) < 0.1,
                                          torch.randint(0, K, (d, h, w), generator=g), base)
                              for _ in range(frames - 1)])
    torch.manual_seed(0)
    if model_name == "test-context":
        model = cm.ContextModel(K, dim=32, max_depth=d)
    else:
        extra = {"patch_size": int(model_name[-1])} if model_name in NEW_ONLY else {}
        model = build_entropy_model("masked_groups", vocab_size=K, depth=d, d_model=128, num_layers=3, nhead=4,
                                    num_groups=6, **extra)
    model.eval()
    c = compress_tokens(x, model, bytes(32), K, intra_period=frames)
    hd = read_header(c.data)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = decode_segment(c.data, hd, 0, model)
    dt = (time.perf_counter() - t0) / frames
    assert torch.equal(out, x), "decoded tokens differ"
    passes = len(model.schedule(__import__("vqforge.entropy", fromlist=["FrameLayout"]).FrameLayout(d, h, w, K)))
    print(json.dumps({"seconds_per_frame": dt, "passes": passes, "hash": entropy_model_hash(model)[:16],
                      "bytes": len(c.data), "load1": [load, os.getloadavg()[0]]}))


def baseline_src(rev: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix="vqforge-baseline-"))
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    return out / "src"


def run_side(src: Path, case: str, frames: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, __file__, "--worker", case, "--frames", str(frames),
                        "--threads", str(threads)], env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{case} with {src} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="e2ad341", help="git revision to compare against (its src/)")
    ap.add_argument("--baseline-src", help="the baseline's src/ directory (instead of --baseline)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="*", default=[f"{m}/{g}" for g in GRIDS for m in MODELS])
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.frames, args.threads)
        return 0
    before = Path(args.baseline_src) if args.baseline_src else baseline_src(args.baseline)
    sides = {"before": before, "after": ROOT / "src"}
    print(f"before: {before}  after: {ROOT / 'src'}", flush=True)
    results: dict[str, dict[str, list[dict]]] = {c: {"before": [], "after": []} for c in args.cases}
    start_load = os.getloadavg()
    for r in range(args.rounds):
        for case in args.cases:
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for side in order:
                if side == "before" and case.split("/")[0] in NEW_ONLY:
                    continue
                res = run_side(sides[side], case, args.frames, args.threads)
                results[case][side].append(res)
                print(f"round {r} {case:26s} {side:6s} {res['seconds_per_frame'] * 1000:9.0f} ms/frame  "
                      f"passes {res['passes']:3d}  load {res['load1'][0]:.1f}->{res['load1'][1]:.1f}  "
                      f"hash {res['hash']}", flush=True)
    print(f"\n{args.threads} threads, {args.frames}-frame segments, {args.rounds} rounds; 1-min load average "
          f"{start_load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print("| model | grid | passes/frame | before s/frame (median; runs) | after s/frame (median; runs) | speed-up |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for case, sides_res in results.items():
        med = {}
        cells = []
        for side in ("before", "after"):
            runs = [x["seconds_per_frame"] for x in sides_res[side]]
            if not runs:
                cells.append("–")
                continue
            med[side] = statistics.median(runs)
            cells.append(f"{med[side]:.3f} ({', '.join(f'{x:.3f}' for x in runs)})")
        if len(sides_res["before"]) and len(sides_res["after"]):
            hashes = {x["hash"] for s in ("before", "after") for x in sides_res[s]}
            assert len(hashes) == 1, f"{case}: the two sides built different models {hashes}"
        speed = f"{med['before'] / med['after']:.2f}x" if len(med) == 2 else "–"
        model, grid = case.split("/")
        passes = (sides_res["after"] or sides_res["before"])[0]["passes"]
        print(f"| {model} | {grid} | {passes} | {cells[0]} | {cells[1]} | {speed} |")
        summary[case] = {"median": med, "runs": sides_res}
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "frames": args.frames,
                                               "load_start": start_load, "load_end": os.getloadavg(),
                                               "cases": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
