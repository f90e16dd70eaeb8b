"""Codec bench: real file size vs the model's estimate, decode time per 256x256 frame, and `vqforge rd`.

    PYTHONPATH=$PWD/src python bench/codec_rd.py --tokenizer RUN_OR_EXPORT --out bench/rd/results
    PYTHONPATH=$PWD/src python bench/codec_rd.py --tokenizer EXPORT --entropy-model RUN_DIR --out DIR

1. Without --entropy-model: fits the test entropy model "test-context" (tests/codec_models.py: a few-pass model,
   checkerboard in 2 steps per residual depth, conditioned on the previous frame) on the tokens of the *training*
   test clips (pan_astronaut, zoom_rocket, cut_astronaut_rocket), and saves it with `save_entropy_model`.
   With --entropy-model DIR: loads the trained, registered entropy model that `vqforge entropy train` wrote
   (`load_entropy_model`; it must have been trained on this tokenizer's tokens, checked by hash) instead.
2. Times decoding (range decoder + entropy model, then the tokenizer's decoder) of 256x256 frames of a held-out clip
   with torch on --threads threads (default 2), alternating the runs; the load average goes into bench.json.
3. Runs `vqforge rd` (codec/rd.py) on the held-out clips and writes rd.json / rd.md / rd.png plus bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--no-adaptive", action="store_true", help="code with the entropy model alone (no adaptive mixing)")
    p.add_argument("--entropy-model", default=None,
                   help="a trained entropy model (the directory `vqforge entropy train` wrote, or its model/) "
                        "instead of fitting the test model")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the decode timing and the rd run")
    p.add_argument("--decode-frames", type=int, default=2, help="frames of the timed segment (first one intra)")
    p.add_argument("--decode-rounds", type=int, default=2)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    model, cfg = _tokenizer(a.tokenizer)
    k = int(cfg.model.n_embed)
    depth = int(getattr(model, "depth", 1))
    bench: dict = {"tokenizer": str(a.tokenizer), "K": k, "depth": depth, "threads": a.threads,
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_start": os.getloadavg()}

    if a.entropy_model:
        ent, meta = trained_entropy_model(a.entropy_model, a.tokenizer)
        bench["entropy_model"] = {"path": str(a.entropy_model), "name": ent.name, "config": ent.model_config(),
                                  "tokenizer_hash": meta.get("tokenizer_hash")}
    else:
        ent = fit_test_model(a, model, k, depth, bench, out)
    decode_timing(a, model, cfg, ent, bench, out)
    if a.skip_rd:
        return

    # 3. vqforge rd on the held-out clips
    t0 = time.perf_counter()
    clips = load_clips(a.clips, [], 32, 256, builtin=True)
    report = run_rd((model, cfg), ent, clips, crfs=a.crf, codecs=a.codecs, pix_fmts=a.pix_fmts, intra_period=32,
                    kid=not a.no_kid, log=lambda s: print(s, flush=True), adaptive=not a.no_adaptive)
    bench["rd_seconds"] = time.perf_counter() - t0
    bench["load_average_end"] = os.getloadavg()
    stats = report["codec_stats"]
    bench["size_vs_estimate"] = [{k2: s[k2] for k2 in ("clip", "method", "depth", "bytes", "header_bytes",
                                                        "estimate_bytes", "bits_per_token")}
                                 | {"excess_percent": 100 * (s["bytes"] / s["estimate_bytes"] - 1)} for s in stats]
    write_report(report, out)
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(markdown(report))


def trained_entropy_model(path: str, tokenizer: str):
    """The registered entropy model at `path`, refused when it was trained on another tokenizer's tokens."""
    from vqforge.entropy.config import EntropyTokenizerConfig
    from vqforge.entropy.tokens import load_tokenizer

    ent, meta = load_entropy_model(path)
    want = meta.get("tokenizer_hash")
    if want:
        tc = meta.get("entropy_config", {}).get("tokenizer", {})
        tok = load_tokenizer(EntropyTokenizerConfig(path=tokenizer, resolution=tc.get("resolution"),
                                                    ema=tc.get("ema", False)))
        if tok.hash != want:
            raise SystemExit(f"{path}: trained on tokens of another tokenizer than {tokenizer} (hashes differ)\n"
                             "  fix: pass the tokenizer it was trained with (--tokenizer)")
    return ent, meta


def fit_test_model(a, model, k: int, depth: int, bench: dict, out: Path):
    """Fit the test model "test-context" on tokens of the training clips; saved and reloaded like a trained one."""
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

    return ent


def decode_timing(a, model, cfg, ent, bench: dict, out: Path) -> None:
    """Decode time per 256x256 frame: entropy decode (model steps + range decoder) and the tokenizer's decoder,
    alternating, on a segment of --decode-frames frames of the first clip (first frame intra)."""
    from vqforge.entropy import FrameLayout

    clip = render_clip(a.clips[0], a.decode_frames, 256)
    comp, tokens = compress_frames((model, cfg), ent, clip, video=True, fps=25, intra_period=a.decode_frames,
                                   adaptive=not a.no_adaptive)
    h = read_header(comp.data)
    ent_times, tok_times = [], []
    with torch.inference_mode():
        for _ in range(a.decode_rounds):
            t0 = time.perf_counter()
            dec = decode_segment(comp.data, h, 0, ent)
            ent_times.append((time.perf_counter() - t0) / len(clip))
            t0 = time.perf_counter()
            decode_tokens(model, dec)
            tok_times.append((time.perf_counter() - t0) / len(clip))
    if not torch.equal(dec, tokens):
        raise SystemExit("decoded tokens differ from the encoded ones")
    steps = len(ent.schedule(FrameLayout(*tokens.shape[1:], int(cfg.model.n_embed))))
    ent_med, tok_med = float(np.median(ent_times)), float(np.median(tok_times))
    bench["decode"] = {"clip": a.clips[0], "frames": len(clip), "token_grid": list(tokens.shape[1:]),
                       "passes_per_frame": steps, "threads": a.threads, "adaptive": h.adaptive,
                       "entropy_decode_s_per_frame_median": ent_med, "tokenizer_decode_s_per_frame_median": tok_med,
                       "total_decode_s_per_frame_median": ent_med + tok_med,
                       "entropy_runs": ent_times, "tokenizer_runs": tok_times, "load_average": os.getloadavg()}
    print(json.dumps(bench["decode"], indent=1), flush=True)
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")


if __name__ == "__main__":
    main()
