"""`vqforge rd`: rate-distortion of vqforge files against x264 / x265 (through PyAV) and JPEG, measured alike.

Rates are whole files on both sides: a `.vqf` file with its header and tables, an MP4 with its container and
parameter sets, a JPEG file with its markers and tables. bpp = 8 * bytes / (frames * height * width).
Distortion is measured on the decoded RGB frames against the source frames (8-bit): PSNR (mean over frames of the
per-frame PSNR), MS-SSIM (`eval.msssim`), LPIPS (only when VGG16 ImageNet weights are available) and KID on
InceptionV3 features pooled over every clip (`eval.kid`; skipped without the InceptionV3 file).

Settings:
- vqforge at every residual depth d: the clip as a video (each frame conditioned on the previous one, an intra frame
  every `intra_period`), and as independent images ("vqforge-intra");
- x264 / x265 for each pixel format (yuv420p, yuv444p) over a CRF sweep (preset medium);
- matched: for each vqforge depth and clip, x264 / x265 with the CRF found by bisection so that the MP4's size is
  within +-2 % of the vqforge file (if even CRF 51 is too large: x264 QP up to 69, x265 average bitrate);
  settings that still miss are marked unmatched with their size ratio;
- JPEG (Pillow, optimized Huffman tables, 4:2:0) per frame at the quality whose size is closest to the per-frame
  share of the vqforge-intra file (the still-image reference).
BD-rate (`bdrate`, PCHIP over log-rate) compares vqforge's depth curve with each sweep, on PSNR and on MS-SSIM.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .bdrate import BDRateError, bd_rate

MATCH_TOLERANCE = 0.02
DEFAULT_FPS = 25
PRESET = "medium"


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    source: str
    sha256: str


# --- reference codecs ------------------------------------------------------------------------------------------------
def encode_reference(frames: np.ndarray, codec: str, pix_fmt: str, *, crf: float | None = None,
                     qp: int | None = None, bitrate: int | None = None, fps: float = DEFAULT_FPS) -> bytes:
    """(T, H, W, 3) uint8 -> the bytes of an MP4 file (libx264 / libx265 through PyAV)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        opts = {"preset": PRESET}
        if crf is not None:
            opts["crf"] = f"{crf:.3f}"
        if qp is not None:
            opts["qp"] = str(int(qp))
        if bitrate is not None:
            s.bit_rate = int(bitrate)
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"
        s.options = opts
        for f in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return buf.getvalue()


def decode_reference(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _bisect(encode: Callable[[float], bytes], lo: float, hi: float, target: int, size_grows: bool,
            integer: bool = False, steps: int = 14) -> tuple[bytes, float]:
    """The knob in [lo, hi] whose output size is closest to `target` (stops once within the tolerance)."""
    best: tuple[float, bytes, float] | None = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        if integer:
            mid = float(round(mid))
        data = encode(mid)
        err = len(data) / target - 1
        if best is None or abs(err) < abs(best[0]):
            best = (err, data, mid)
        if abs(err) <= MATCH_TOLERANCE or (integer and hi - lo <= 1):
            break
        if (len(data) > target) == size_grows:
            hi = mid
        else:
            lo = mid
    assert best is not None
    return best[1], best[2]


def match_reference(frames: np.ndarray, codec: str, pix_fmt: str, target: int, fps: float) -> dict:
    """An MP4 of `frames` whose size is as close as the encoder allows to `target` bytes (see the module doc)."""
    enc = lambda **kw: encode_reference(frames, codec, pix_fmt, fps=fps, **kw)  # noqa: E731
    data, knob = _bisect(lambda v: enc(crf=v), 0.0, 51.0, target, size_grows=False)
    how = f"crf {knob:.2f}"
    if len(data) > target * (1 + MATCH_TOLERANCE):
        if codec == "libx264":
            d2, q = _bisect(lambda v: enc(qp=int(v)), 51, 69, target, size_grows=False, integer=True)
            how2 = f"qp {int(q)}"
        else:
            seconds = len(frames) / fps
            d2, b = _bisect(lambda v: enc(bitrate=int(v)), 1000.0, 8 * target / seconds * 2, target, size_grows=True)
            how2 = f"bitrate {int(b)} b/s"
        if abs(len(d2) / target - 1) < abs(len(data) / target - 1):
            data, how = d2, how2
    return {"data": data, "setting": how, "ratio": len(data) / target,
            "matched": abs(len(data) / target - 1) <= MATCH_TOLERANCE}


def jpeg_near(frame: np.ndarray, target: int) -> tuple[bytes, int]:
    """The JPEG (Pillow, optimize=True, 4:2:0) of `frame` at the quality 1..95 whose size is closest to `target`."""
    from PIL import Image

    img = Image.fromarray(frame)
    cache: dict[int, bytes] = {}

    def enc(q: int) -> bytes:
        if q not in cache:
            b = io.BytesIO()
            img.save(b, format="JPEG", quality=q, optimize=True, subsampling=2)
            cache[q] = b.getvalue()
        return cache[q]

    lo, hi = 1, 95
    while lo < hi:  # smallest quality whose size reaches the target
        mid = (lo + hi) // 2
        if len(enc(mid)) < target:
            lo = mid + 1
        else:
            hi = mid
    cands = [q for q in (lo - 1, lo) if 1 <= q <= 95]
    q = min(cands, key=lambda c: abs(len(enc(c)) - target))
    return enc(q), q


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- metrics ---------------------------------------------------------------------------------------------------------
class Meter:
    """PSNR / MS-SSIM / LPIPS per frame, InceptionV3 features for KID."""

    def __init__(self, lpips: torch.nn.Module | None, inception: torch.nn.Module | None):
        self.lpips, self.inception = lpips, inception
        self._ref_feats: dict[str, torch.Tensor] = {}

    @staticmethod
    def _chw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8

    def features(self, frames: np.ndarray) -> torch.Tensor | None:
        if self.inception is None:
            return None
        x = self._chw(frames).float().div(127.5).sub(1)
        return torch.cat([self.inception(x[i:i + 16]) for i in range(0, len(x), 16)]).cpu()

    def ref_features(self, clip: Clip) -> torch.Tensor | None:
        if clip.name not in self._ref_feats:
            self._ref_feats[clip.name] = self.features(clip.frames)
        return self._ref_feats[clip.name]

    def measure(self, ref: np.ndarray, rec: np.ndarray, with_features: bool) -> dict:
        from ..eval.metrics import psnr_per_image
        from ..eval.msssim import ms_ssim_per_image

        if rec.shape != ref.shape:
            raise DataError(f"decoded frames have shape {rec.shape}, the source {ref.shape}")
        a, b = self._chw(ref), self._chw(rec)
        out = {"psnr": psnr_per_image(a, b).clamp(max=100).tolist(), "msssim": ms_ssim_per_image(a, b).tolist()}
        if self.lpips is not None:
            with torch.no_grad():
                xa, xb = a.float().div(127.5).sub(1), b.float().div(127.5).sub(1)
                out["lpips"] = torch.cat([self.lpips(xa[i:i + 8], xb[i:i + 8]).reshape(-1)
                                          for i in range(0, len(xa), 8)]).tolist()
        if with_features:
            out["features"] = self.features(rec)
        return out


@dataclass
class Row:
    """One setting over every clip."""

    method: str
    setting: str
    depth: int | None = None
    bytes: int = 0
    pixels: int = 0
    frames: int = 0
    psnr: list[float] = field(default_factory=list)
    msssim: list[float] = field(default_factory=list)
    lpips: list[float] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # matched rows: size / target per clip
    matched: list[bool] = field(default_factory=list)
    kid: float | None = None
    extra: dict = field(default_factory=dict)

    def add(self, nbytes: int, clip: Clip, m: dict) -> None:
        self.bytes += nbytes
        t, h, w = clip.frames.shape[:3]
        self.pixels += t * h * w
        self.frames += t
        self.psnr += m["psnr"]
        self.msssim += m["msssim"]
        self.lpips += m.get("lpips", [])
        if m.get("features") is not None:
            self.features.append(m["features"])

    @property
    def bpp(self) -> float:
        return 8 * self.bytes / self.pixels

    def summary(self) -> dict:
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        d = {"method": self.method, "setting": self.setting, "depth": self.depth, "bytes": self.bytes,
             "bpp": self.bpp, "psnr": mean(self.psnr), "msssim": mean(self.msssim), "lpips": mean(self.lpips),
             "kid": self.kid, "frames": self.frames}
        if self.ratios:
            d["size_ratio"] = self.ratios
            d["matched"] = all(self.matched)
        d.update(self.extra)
        return d


# --- the comparison --------------------------------------------------------------------------------------------------
def load_clips(names: list[str] | None, data: list[str], frames: int, size: int, builtin: bool) -> list[Clip]:
    from ..data.test_clips import HELD_OUT_CLIPS, clip_sha256, render_clip

    clips = []
    if builtin:
        for n in (names or list(HELD_OUT_CLIPS)):
            f = render_clip(n, frames, size)
            clips.append(Clip(n, f, DEFAULT_FPS, "vqforge.data.test_clips", clip_sha256(f)))
    for entry in data:
        clips.append(_user_clip(Path(entry), frames, size))
    if not clips:
        raise ConfigError("--data", "no clips to measure", "pass --data FOLDER or leave out --no-test-clips")
    return clips


def _user_clip(path: Path, frames: int, size: int) -> Clip:
    from ..data import media_kind, resolve_sources
    from ..data.test_clips import clip_sha256
    from ..tokens.frames import input_frames

    files = resolve_sources([str(path)], "--data")
    if path.is_file() and media_kind(path) == "video":
        files = [path]
    sources: list[dict] = []
    got = []
    for f in input_frames(files, size, size, sources):
        got.append(f)
        if len(got) == frames:
            break
    if len(got) < 2:
        raise DataError(f"{path}: gives {len(got)} frame(s); a clip needs at least 2\n  fix: pass a video or a folder "
                        "of images")
    arr = np.stack(got)
    fps = next((s.get("fps") for s in sources if s.get("fps")), None) or DEFAULT_FPS
    return Clip(path.stem or path.name, arr, float(fps), str(path), clip_sha256(arr))


def _lpips(vgg: str | None) -> tuple[torch.nn.Module | None, str | None]:
    from ..losses import vgg as vgg_mod
    from ..losses.perceptual import build_lpips

    if vgg is not None:
        return build_lpips(vgg).eval(), None
    if os.environ.get(vgg_mod.VGG16_ENV) or vgg_mod.hub_cache_path().is_file():
        return build_lpips(None).eval(), None
    return None, "LPIPS skipped: no VGG16 ImageNet weights (pass --vgg FILE or set $" + vgg_mod.VGG16_ENV + ")"


def run_rd(tokenizer, entropy_model, clips: list[Clip], *, crfs: list[float], codecs: list[str],
           pix_fmts: list[str], intra_period: int = 32, kid: bool = True, vgg: str | None = None,
           log: Callable[[str], None] = print, adaptive: bool = True) -> dict:
    """Measure every setting on every clip; returns the JSON-able report (rows, matched, bd_rate, notes)."""
    import av

    from ..eval.fid import load_inception
    from .api import _entropy, _tokenizer, codebook_size, decode_tokens, encode_images, tokenizer_hash
    from .coder import compress_tokens, decompress_tokens

    model, cfg = _tokenizer(tokenizer)
    ent = _entropy(entropy_model)
    k = codebook_size(model, cfg)
    tok_hash = tokenizer_hash(model, cfg)
    notes: list[str] = []
    for c in list(codecs):
        if c not in av.codecs_available:
            notes.append(f"{c} is not in this PyAV build (av.codecs_available): left out")
            codecs = [x for x in codecs if x != c]
    lpips, why = _lpips(vgg)
    if why:
        notes.append(why)
    inception = None
    if kid:
        inception, why = load_inception(None)
        if why:
            notes.append(why.replace("rFID", "KID"))
    meter = Meter(lpips, inception)
    rows: dict[str, Row] = {}
    depth_max = int(getattr(model, "depth", 1))
    codec_stats = []

    def row(key: str, **kw) -> Row:
        if key not in rows:
            rows[key] = Row(**kw)
        return rows[key]

    for clip in clips:
        log(f"clip {clip.name}: {clip.frames.shape[0]} frames {clip.frames.shape[2]}x{clip.frames.shape[1]}")
        vq_bytes: dict[tuple[str, int], int] = {}
        t0 = time.perf_counter()
        all_tokens = encode_images(model, clip.frames)  # (T, D, h, w): encoded once, coded at every depth
        encode_s = (time.perf_counter() - t0) / len(clip.frames)
        for d in range(1, depth_max + 1):
            t0 = time.perf_counter()
            rec = decode_tokens(model, all_tokens[:, :d])  # the same frames whichever way the tokens are coded
            tok_decode_s = (time.perf_counter() - t0) / len(clip.frames)
            m = meter.measure(clip.frames, rec, with_features=True)
            for video, method in ((True, "vqforge"), (False, "vqforge-intra")):
                t1 = time.perf_counter()
                comp = compress_tokens(all_tokens[:, :d], ent, tok_hash, k, intra_period=intra_period,
                                       independent=not video, fps=clip.fps if video else None,
                                       adaptive=adaptive)
                t2 = time.perf_counter()
                dec, _ = decompress_tokens(comp.data, ent, tok_hash)  # the real decoder, from the bytes
                t3 = time.perf_counter()
                if not torch.equal(dec, all_tokens[:, :d]):
                    # unreachable: the container's checksums raise CodecError first
                    raise AssertionError("decoded tokens differ from the encoded ones")
                r = row(f"{method}|{d}", method=method, setting=f"depth {d}", depth=d)
                r.add(comp.total_bytes, clip, m)
                vq_bytes[(method, d)] = comp.total_bytes
                codec_stats.append({"clip": clip.name, "method": method, "depth": d, "bytes": comp.total_bytes,
                                    "header_bytes": comp.header_bytes, "estimate_bytes": comp.estimate_bytes,
                                    "bits_per_token": comp.bits_per_token, "tokenizer_encode_s_per_frame": encode_s,
                                    "entropy_encode_s_per_frame": (t2 - t1) / comp.frames,
                                    "entropy_decode_s_per_frame": (t3 - t2) / comp.frames,
                                    "tokenizer_decode_s_per_frame": tok_decode_s})
        for codec in codecs:
            for pf in pix_fmts:
                for crf in crfs:
                    data = encode_reference(clip.frames, codec, pf, crf=crf, fps=clip.fps)
                    m = meter.measure(clip.frames, decode_reference(data), with_features=False)
                    r = row(f"{codec}|{pf}|crf{crf:g}", method=f"{codec} {pf}", setting=f"crf {crf:g}")
                    r.add(len(data), clip, m)
                for d in range(1, depth_max + 1):
                    target = vq_bytes[("vqforge", d)]
                    mr = match_reference(clip.frames, codec, pf, target, clip.fps)
                    m = meter.measure(clip.frames, decode_reference(mr["data"]), with_features=True)
                    r = row(f"match|{codec}|{pf}|{d}", method=f"{codec} {pf}", setting="matched", depth=d)
                    r.add(len(mr["data"]), clip, m)
                    r.ratios.append(mr["ratio"])
                    r.matched.append(mr["matched"])
                    r.extra.setdefault("settings", []).append(mr["setting"])
            log(f"  {codec}: sweep and matched sizes done")
        for d in range(1, depth_max + 1):
            per_frame = vq_bytes[("vqforge-intra", d)] / len(clip.frames)
            datas, qs = zip(*(jpeg_near(f, int(round(per_frame))) for f in clip.frames))
            rec = np.stack([decode_jpeg(b) for b in datas])
            m = meter.measure(clip.frames, rec, with_features=True)
            r = row(f"match|jpeg|{d}", method="jpeg", setting="matched to vqforge-intra", depth=d)
            n = sum(map(len, datas))
            r.add(n, clip, m)
            r.ratios.append(n / vq_bytes[("vqforge-intra", d)])
            r.matched.append(abs(n / vq_bytes[("vqforge-intra", d)] - 1) <= MATCH_TOLERANCE)
            r.extra.setdefault("settings", []).append(f"quality {min(qs)}..{max(qs)}")

    if inception is not None:
        ref = torch.cat([meter.ref_features(c) for c in clips])
        from ..eval.kid import kid_from_features

        for r in rows.values():
            if r.features:
                r.kid = kid_from_features(ref, torch.cat(r.features))
    summaries = {k: r.summary() for k, r in rows.items()}
    report = {
        "clips": [{"name": c.name, "frames": int(c.frames.shape[0]), "size": list(c.frames.shape[1:3]),
                   "fps": c.fps, "source": c.source, "sha256": c.sha256} for c in clips],
        "rows": summaries, "codec_stats": codec_stats, "notes": notes,
        "bd_rate": _bd_rates(summaries, codecs, pix_fmts, depth_max),
        "settings": {"crf": crfs, "codecs": codecs, "pix_fmts": pix_fmts, "preset": PRESET,
                     "intra_period": intra_period, "match_tolerance": MATCH_TOLERANCE, "adaptive": adaptive},
    }
    return report


def _bd_rates(rows: dict[str, dict], codecs: list[str], pix_fmts: list[str], depth_max: int) -> list[dict]:
    out = []
    for method in ("vqforge", "vqforge-intra"):
        test = [rows[f"{method}|{d}"] for d in range(1, depth_max + 1)]
        for codec in codecs:
            for pf in pix_fmts:
                anchor = [r for k, r in rows.items() if k.startswith(f"{codec}|{pf}|crf")]
                for metric in ("psnr", "msssim"):
                    entry = {"test": method, "anchor": f"{codec} {pf} (CRF sweep)", "metric": metric}
                    try:
                        entry["bd_rate_percent"] = bd_rate([r["bpp"] for r in anchor], [r[metric] for r in anchor],
                                                           [r["bpp"] for r in test], [r[metric] for r in test])
                    except BDRateError as e:
                        entry["bd_rate_percent"] = None
                        entry["why"] = str(e)
                    out.append(entry)
    return out


# --- output ----------------------------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = ["Clips: " + ", ".join(f"{c['name']} ({c['frames']} frames {c['size'][1]}x{c['size'][0]})"
                                    for c in report["clips"]), ""]
    head = "| method | setting | bytes | bpp | PSNR dB | MS-SSIM | LPIPS | KID |"
    sep = "|---|---|---:|---:|---:|---:|---:|---:|"

    def line(r: dict, setting: str | None = None) -> str:
        return (f"| {r['method']} | {setting or r['setting']} | {r['bytes']} | {_fmt(r['bpp'], '.4f')} | "
                f"{_fmt(r['psnr'], '.2f')} | {_fmt(r['msssim'], '.4f')} | {_fmt(r['lpips'], '.4f')} | "
                f"{_fmt(r['kid'], '.4f')} |")

    lines += ["Rate-distortion sweep (whole files, all clips together):", "", head, sep]
    for r in sorted((r for k, r in rows.items() if not k.startswith("match|")),
                    key=lambda r: (r["method"], r["bpp"])):
        lines.append(line(r))
    lines += ["", "Matched sizes (per clip: the reference file within +-2 % of the vqforge file; JPEG per frame "
              "against vqforge-intra):", "", head, sep]
    depths = sorted({r["depth"] for r in rows.values() if r["depth"]})
    for d in depths:
        for k in (f"vqforge|{d}", f"vqforge-intra|{d}"):
            lines.append(line(rows[k]))
        for k, r in rows.items():
            if k.startswith("match|") and r["depth"] == d:
                ratio = ", ".join(f"{x:.3f}" for x in r.get("size_ratio", []))
                tag = "matched" if r.get("matched") else "UNMATCHED"
                lines.append(line(r, f"{tag} to depth {d} (size ratio {ratio}; {'; '.join(r.get('settings', []))})"))
    lines += ["", "BD-rate of vqforge against each CRF sweep (negative: vqforge needs fewer bits at equal quality):",
              "", "| test | anchor | metric | BD-rate |", "|---|---|---|---:|"]
    for e in report["bd_rate"]:
        v = e["bd_rate_percent"]
        lines.append(f"| {e['test']} | {e['anchor']} | {e['metric']} | "
                     f"{'%+.1f %%' % v if v is not None else 'n/a: ' + e['why']} |")
    if report["notes"]:
        lines += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for k, r in report["rows"].items() if not k.startswith("match|")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "msssim", "MS-SSIM")):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["bpp"], r[metric]) for r in rows if r["method"] == method and r[metric] is not None)
            style = "o-" if method.startswith("vqforge") else ".--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=method)
        jp = [r for k, r in report["rows"].items() if k.startswith("match|jpeg")]
        if jp:
            pts = sorted((r["bpp"], r[metric]) for r in jp)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "s:", label="jpeg (matched)")
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (whole files)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("vqforge vs x264/x265 vs JPEG: " + ", ".join(c["name"] for c in report["clips"]))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rd.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "rd.md").write_text(markdown(report))
    plot(report, out / "rd.png")
    return [out / "rd.json", out / "rd.md", out / "rd.png"]


def rd_command(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise ConfigError("--frames", f"must be >= 2, got {args.frames}", "use e.g. 32")
    clips = load_clips(args.clips, list(args.data), args.frames, args.size, builtin=not args.no_test_clips)
    report = run_rd(args.tokenizer, args.entropy_model, clips, crfs=list(args.crf), codecs=list(args.codecs),
                    pix_fmts=list(args.pix_fmts), intra_period=args.intra_period, kid=args.kid, vgg=args.vgg,
                    adaptive=args.adaptive)
    written = write_report(report, Path(args.out))
    print(markdown(report))
    print("wrote " + ", ".join(map(str, written)))
    return 0


__all__ = ["Clip", "bd_rate", "encode_reference", "decode_reference", "jpeg_near", "load_clips", "markdown",
           "match_reference", "plot", "run_rd", "write_report"]
