"""Non-learned reference points for a tokenizer: what bicubic resampling and JPEG score on the same images.

A PSNR of 24 dB says little on its own; beside it, these say what the tokenizer is worth:

- `bicubic_x{f}`: shrink each image by the factor f (Pillow bicubic, to round(H / f) × round(W / f)), then enlarge it
  back (bicubic). It keeps 24 bits per kept pixel, i.e. 24 / f² bits per image pixel, uncompressed. Reported at the
  model's downsampling factor (same token grid as the model) and, when that keeps more bits than the model spends,
  also at the smallest power-of-two factor whose raw rate is at most the model's bits per pixel (same rate).
- `jpeg`: Pillow's baseline JPEG (libjpeg, 4:2:0 chroma, standard Huffman tables). For each image the quality is the
  largest of 1..95 whose rate is at most the model's bits per pixel, found by bisection (the size grows with the
  quality). The rate counts the entropy-coded data only: the file's headers (quantization and Huffman tables,
  frame and scan headers) are left out, because standard tables are fixed by the quality number and the
  tokenizer's rate, log2(K) bits per token, has no container either. A decoder that knows the quality and the size
  needs nothing else. When even quality 1 is over the budget, quality 1 is used and its (higher) rate reported.

Images go through the same 8-bit quantization as the metrics (`vqforge.eval.metrics.to_uint8`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .metrics import to_uint8

RGB_BITS = 24
JPEG_QUALITIES = (1, 95)  # Pillow's documented useful range
_SOS = 0xDA


@dataclass(frozen=True)
class BaselineSpec:
    name: str  # "bicubic_x4", "jpeg"
    kind: str  # "bicubic" | "jpeg"
    factor: int = 1  # bicubic: down/up-sampling factor
    target_bpp: float = 0.0  # jpeg: bit budget per pixel

    def describe(self) -> str:
        if self.kind == "bicubic":
            return f"bicubic x{self.factor} down/up"
        return f"JPEG at <= {self.target_bpp:.3g} bpp"


def model_factor(height: int, width: int, tokens: list[int]) -> int:
    """The model's downsampling factor: sqrt(pixels / tokens) of its finest token grid, rounded."""
    return max(1, round(math.sqrt(height * width / max(tokens))))


def baseline_specs(factor: int, model_bpp: float) -> list[BaselineSpec]:
    """Bicubic at the model's factor, bicubic at the model's rate (when different) and JPEG at the model's rate."""
    specs = [BaselineSpec(f"bicubic_x{factor}", "bicubic", factor=factor)]
    rate_factor = factor
    while RGB_BITS / rate_factor**2 > model_bpp + 1e-9:
        rate_factor *= 2
    if rate_factor != factor:
        specs.append(BaselineSpec(f"bicubic_x{rate_factor}", "bicubic", factor=rate_factor))
    specs.append(BaselineSpec("jpeg", "jpeg", target_bpp=model_bpp))
    return specs


def _hwc(x: torch.Tensor) -> np.ndarray:
    # (N, C, H, W) [-1, 1] floats or uint8 -> (N, H, W, C) uint8
    u = x if x.dtype == torch.uint8 else to_uint8(x)
    return u.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def _back(images: list[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    # list of (H, W) or (H, W, C) uint8 -> (N, C, H, W) floats in [-1, 1] on like's device
    a = np.stack([i if i.ndim == 3 else i[:, :, None] for i in images])
    t = torch.from_numpy(a).permute(0, 3, 1, 2).to(torch.float32).div_(127.5).sub_(1.0)
    return t.to(like.device)


def bicubic_bpp(factor: int, height: int, width: int) -> float:
    """Raw rate of the shrunken image: 24 bits per kept pixel, per pixel of the original."""
    kept = max(1, round(height / factor)) * max(1, round(width / factor))
    return RGB_BITS * kept / (height * width)


def bicubic_roundtrip(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> the same images shrunk by `factor` and enlarged back (Pillow bicubic, 8-bit)."""
    out = []
    for a in _hwc(x):
        h, w = a.shape[:2]
        small = _pil(a).resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BICUBIC)
        out.append(np.asarray(small.resize((w, h), Image.BICUBIC)))
    return _back(out, x)


def jpeg_header_bytes(data: bytes) -> int:
    """Bytes before the entropy-coded data: everything up to and including the (first) start-of-scan header."""
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"not a JPEG marker at byte {i}")
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == _SOS:
            return i + 2 + length
        i += 2 + length
    raise ValueError("no start-of-scan marker in the JPEG data")


def jpeg_encode(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    _pil(a).save(buf, format="JPEG", quality=int(quality), optimize=False, progressive=False)
    return buf.getvalue()


def jpeg_payload_bits(data: bytes) -> int:
    """Entropy-coded bits: the file less its headers and the 2-byte end-of-image marker."""
    return 8 * (len(data) - jpeg_header_bytes(data) - 2)


@dataclass
class JpegResult:
    image: np.ndarray  # decoded (H, W) or (H, W, C) uint8
    quality: int
    bpp: float  # entropy-coded bits per pixel
    file_bpp: float  # whole-file bits per pixel, headers included


def jpeg_at_bpp(a: np.ndarray, target_bpp: float) -> JpegResult:
    """(H, W, C) uint8 image -> JPEG at the largest quality whose entropy-coded rate is <= target_bpp (bisection)."""
    pixels = a.shape[0] * a.shape[1]
    cache: dict[int, bytes] = {}

    def enc(q: int) -> bytes:
        if q not in cache:
            cache[q] = jpeg_encode(a, q)
        return cache[q]

    def fits(q: int) -> bool:
        return jpeg_payload_bits(enc(q)) <= target_bpp * pixels

    lo, hi = JPEG_QUALITIES
    if fits(hi):
        best = hi
    elif not fits(lo):
        best = lo  # over budget even at the lowest quality: reported as is
    else:
        while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        best = lo
    data = enc(best)
    dec = np.asarray(Image.open(io.BytesIO(data)))
    return JpegResult(dec, best, jpeg_payload_bits(data) / pixels, 8 * len(data) / pixels)


def apply_baseline(spec: BaselineSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction (N, C, H, W) in [-1, 1], bits per pixel (N,), JPEG quality (N,) or zeros) for `spec`."""
    n, _, h, w = x.shape
    if spec.kind == "bicubic":
        bpp = torch.full((n,), bicubic_bpp(spec.factor, h, w), dtype=torch.float64)
        return bicubic_roundtrip(x, spec.factor), bpp, torch.zeros(n, dtype=torch.float64)
    if spec.kind == "jpeg":
        res = [jpeg_at_bpp(a, spec.target_bpp) for a in _hwc(x)]
        bpp = torch.tensor([r.bpp for r in res], dtype=torch.float64)
        q = torch.tensor([float(r.quality) for r in res], dtype=torch.float64)
        return _back([r.image for r in res], x), bpp, q
    raise ValueError(f"unknown baseline kind {spec.kind!r}")
