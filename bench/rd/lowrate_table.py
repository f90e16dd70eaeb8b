"""The README's low-rate table from a `vqforge rd` report: per vqforge depth, its whole-file rate and quality beside
each reference matched to the same file size (x264/x265 per pixel format, JPEG), and the coded bits per token.

    python bench/rd/lowrate_table.py bench/results/rd_lowrate/rd.json [--k 256]
"""

from __future__ import annotations

import argparse
import json
import math


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--k", type=int, default=256)
    a = ap.parse_args()
    r = json.load(open(a.report))
    rows = r["rows"]
    depths = sorted({v["depth"] for k, v in rows.items() if k.startswith("vqforge|")})
    refs = sorted({k.split("|", 1)[1].rsplit("|", 1)[0] for k in rows if k.startswith("match|")})
    print("| depth | method | bpp | PSNR dB | MS-SSIM | KID | size ratio to vqforge (per clip) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for d in depths:
        for key in [f"vqforge|{d}", f"vqforge-intra|{d}"] + [f"match|{ref}|{d}" for ref in refs]:
            v = rows.get(key)
            if v is None:
                continue
            ratio = ", ".join(f"{x:.3f}" for x in v.get("size_ratio", [])) or ""
            if v.get("size_ratio") and not v.get("matched", True):
                ratio += " UNMATCHED"
            print(f"| {d} | {v['method']} | {v['bpp']:.4f} | {v['psnr']:.2f} | {fmt(v.get('msssim'), '.4f')} | "
                  f"{fmt(v.get('kid'), '.4f')} | {ratio} |")
    print()
    print("| depth | coded bits/token (vqforge video, all clips) | ÷ log2 K | file vs estimate + header |")
    print("|---|---:|---:|---:|")
    for d in depths:
        st = [s for s in r["codec_stats"] if s["method"] == "vqforge" and s["depth"] == d]
        if not st:
            continue
        tokens = [(s["bytes"] - s["header_bytes"]) * 8 / s["bits_per_token"] if s["bits_per_token"] else 0
                  for s in st]
        bits = sum(s["bits_per_token"] * t for s, t in zip(st, tokens)) / sum(tokens)
        excess = max(100 * (s["bytes"] / s["estimate_bytes"] - 1) for s in st)
        print(f"| {d} | {bits:.3f} | {bits / math.log2(a.k):.3f} | max {excess:+.3f} % |")


if __name__ == "__main__":
    main()
