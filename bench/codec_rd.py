"""Codec bench: real file size vs the model's estimate, decode time per 256x256 frame, and `vqforge rd`.

    PYTHONPATH=$PWD/src python bench/codec_rd.py --tokenizer RUN_OR_EXPORT --out bench/rd/results

1. Fits the test entropy model "test-context" (tests/codec_models.py: a few-pass model, checkerboard in 2 steps
   per residual depth, conditioned on the previous frame) on the tokens of the *training* test clips
   (pan_astronaut, zoom_rocket, cut_astronaut_rocket), and saves it with `save_entropy_model`.
2. Times decoding (range decoder + entropy model, then the tokenizer's decoder) of 256x256 frames of a held-out clip
   with torch on 2 threads, alternating the runs.
3. Runs `vqforge rd` (codec/rd.py) on the held-out clips and writes rd.json / rd.md / rd.png plus bench.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import codec_models as cm  # noqa: E402  (registers the test entropy models)

from vqforge.codec.api import _tokenizer, compress_frames, decode_tokens, encode_images  # noqa: E402
from vqforge.codec.coder import decode_segment, read_header  # noqa: E402
from vqforge.codec.rd import load_clips, markdown, run_rd, write_report  # noqa: E402
from vqforge.data.test_clips import HELD_OUT_CLIPS, TRAIN_CLIPS, render_clip  # noqa: E402
from vqforge.entropy import load_entropy_model, save_entropy_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", default="bench/rd/results")
    p.add_argument("--fit-steps", type=int, default=40)
    p.add_argument("--fit-frames", type=int, default=4, help="frames per training clip used to fit")
    p.add_argument("--clips", nargs="*", default=list(HELD_OUT_CLIPS))
    p.add_argument("--crf", type=float, nargs="*", default=[23, 29, 35, 41, 47, 51])
    p.add_argument("--codecs", nargs="*", default=["libx264", "libx265"])
    p.add_argument("--pix-fmts", nargs="*", default=["yuv420p", "yuv444p"])
    p.add_argument("--no-kid", action="store_true")
    p.add_argument("--skip-rd", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    model, cfg = _tokenizer(a.tokenizer)
    k = int(cfg.model.n_embed)
    depth = int(getattr(model, "depth", 1))
    bench: dict = {"tokenizer": str(a.tokenizer), "K": k, "depth": depth, "threads": 2}

    # 1. fit the entropy model on tokens of the training clips
    t0 = time.perf_counter()
    train = torch.cat([encode_images(model, render_clip(n, a.fit_frames, 256)) for n in TRAIN_CLIPS])
    ent = cm.ContextModel(k, dim=32, max_depth=depth)
    torch.manual_seed(0)
    # fit per clip so that "previous frame" never crosses clips
    opt_bits = None
    per_clip = train.view(len(TRAIN_CLIPS), a.fit_frames, *train.shape[1:])
    opt = torch.optim.Adam(ent.parameters(), lr=2e-2)
    from vqforge.entropy import FrameLayout
    import torch.nn.functional as F

    layout = FrameLayout(*train.shape[1:], k)
    ent.train()
    for step in range(a.fit_steps):
        loss = 0.0
        c = per_clip[step % len(TRAIN_CLIPS)]
        for f in range(c.shape[0]):
            logits = ent.frame_logits(c[f], c[f - 1] if f else None, layout)
            loss = loss + F.cross_entropy(logits, c[f].reshape(-1), reduction="sum")
        loss = loss / c.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        opt_bits = float(loss.detach()) / np.log(2)
        if step % 25 == 0:
            print(f"fit step {step}: {opt_bits:.3f} bits/token (teacher forced, training clips)", flush=True)
    ent.eval()
    ent_dir = save_entropy_model(ent, out / "entropy_model")
    ent, _ = load_entropy_model(ent_dir)
    bench["fit"] = {"steps": a.fit_steps, "frames": int(train.shape[0]), "final_train_bits_per_token": opt_bits,
                    "seconds": time.perf_counter() - t0, "clips": list(TRAIN_CLIPS)}

    # 2. decode time per 256x256 frame on 2 threads (alternating entropy decode and tokenizer decode)
    clip = render_clip(a.clips[0], 2, 256)
    comp, tokens = compress_frames((model, cfg), ent, clip, video=True, fps=25, intra_period=2)
    h = read_header(comp.data)
    ent_times, tok_times = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        dec = decode_segment(comp.data, h, 0, ent)
        ent_times.append((time.perf_counter() - t0) / len(clip))
        t0 = time.perf_counter()
        decode_tokens(model, dec)
        tok_times.append((time.perf_counter() - t0) / len(clip))
    assert torch.equal(dec, tokens)
    steps = len(ent.schedule(layout))
    bench["decode"] = {"clip": a.clips[0], "frames": len(clip), "token_grid": list(tokens.shape[1:]),
                       "passes_per_frame": steps, "entropy_decode_s_per_frame_median": float(np.median(ent_times)),
                       "tokenizer_decode_s_per_frame_median": float(np.median(tok_times)),
                       "entropy_runs": ent_times, "tokenizer_runs": tok_times}
    print(json.dumps(bench["decode"], indent=1), flush=True)
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    if a.skip_rd:
        return

    # 3. vqforge rd on the held-out clips
    t0 = time.perf_counter()
    clips = load_clips(a.clips, [], 32, 256, builtin=True)
    report = run_rd((model, cfg), ent, clips, crfs=a.crf, codecs=a.codecs, pix_fmts=a.pix_fmts, intra_period=32,
                    kid=not a.no_kid, log=lambda s: print(s, flush=True))
    bench["rd_seconds"] = time.perf_counter() - t0
    stats = report["codec_stats"]
    bench["size_vs_estimate"] = [{k2: s[k2] for k2 in ("clip", "method", "depth", "bytes", "header_bytes",
                                                        "estimate_bytes", "bits_per_token")}
                                 | {"excess_percent": 100 * (s["bytes"] / s["estimate_bytes"] - 1)} for s in stats]
    write_report(report, out)
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
