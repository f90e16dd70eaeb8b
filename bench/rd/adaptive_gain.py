"""Coded bits per token of a trained entropy model on whole clips, with and without adaptive mixing (README:
Compression, "Measured: low rate").

    PYTHONPATH=$PWD/src python bench/rd/adaptive_gain.py runs/ent_f16 --split val --out bench/results/rd_lowrate_adaptive/adaptive_gain.json

Each clip's cached tokens (the shards `vqforge entropy train` wrote, so exactly the tokens `vqforge rd` codes) are
really compressed (`compress_tokens`, intra period 32, one intra frame per clip of 32 frames) both ways and decoded
back; the rate is the payload's bits (range coder output, headers excluded) per token, per depth from the
coder's own per-depth code lengths (`coded_bits`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vqforge.codec import coded_bits, compress_tokens, decompress_tokens
from vqforge.entropy.base import load_entropy_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("entropy_model", help="run directory of `vqforge entropy train` (its model/ is used)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--cache", default=None, help="token cache directory (default: the run's tokenizer.cache_dir)")
    ap.add_argument("--intra-period", type=int, default=32)
    ap.add_argument("--max-clips", type=int, default=None, help="only the first N clips of the split")
    ap.add_argument("--every", type=int, default=1, help="only every N-th clip of the split")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ent, meta = load_entropy_model(a.entropy_model)
    cache = Path(a.cache or meta["entropy_config"]["tokenizer"]["cache_dir"]) / meta["tokenizer_hash"][:16]
    index = json.loads((cache / a.split / "index.json").read_text())
    k = ent.vocab_size
    clips = []
    for entry, shard in list(zip(index["files"], index["shards"]))[::a.every][:a.max_clips]:
        x = load_file(cache / a.split / shard)["tokens"].long()
        row = {"file": Path(entry["path"]).name, "tokens": list(x.shape)}
        for adaptive in (False, True):
            t0 = time.perf_counter()
            c = compress_tokens(x, ent, bytes(32), k, intra_period=a.intra_period, adaptive=adaptive)
            enc_s = time.perf_counter() - t0
            back, _ = decompress_tokens(c.data, ent)
            if not torch.equal(back, x):
                raise SystemExit("decoded tokens differ")  # unreachable: the checksums raise first
            per_depth = coded_bits(x, ent, k, intra_period=a.intra_period, adaptive=adaptive).sum(axis=0)
            bpt = 8 * c.payload_bytes / x.numel()
            row["adaptive" if adaptive else "model_only"] = {
                "payload_bytes": c.payload_bytes, "bits_per_token": bpt, "ratio_log2K": bpt / math.log2(k),
                "bits_per_token_depth": (per_depth / (x.numel() / x.shape[1])).tolist(),
                "encode_s_per_frame": enc_s / x.shape[0]}
        clips.append(row)
        print(json.dumps(row), flush=True)
    total = {}
    for mode in ("model_only", "adaptive"):
        bits = sum(8 * c[mode]["payload_bytes"] for c in clips)
        n = sum(int(np.prod(c["tokens"])) for c in clips)
        total[mode] = {"bits_per_token": bits / n, "ratio_log2K": bits / n / math.log2(k)}
    report = {"entropy_model": str(a.entropy_model), "K": k, "split": a.split, "intra_period": a.intra_period,
              "clips": clips, "all_clips": total}
    print(json.dumps(total, indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
