"""Pictures and tables of evaluation results: reconstruction grid, codebook-usage histogram, rate-distortion plot.

Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global state). Image sizes are fixed by the
figure size and DPI so that callers and tests know them in advance:
- reconstruction grid: inputs in the first row, reconstructions in the second (repeating in row pairs when there are
  more than `ncol` images), `pad` pixels of gray between and around tiles;
- labelled grid (what training and `vqforge eval` write): the same pairs enlarged with nearest neighbour to at least
  `LABEL_MIN_TILE` pixels, rows named, each reconstruction captioned with its PSNR (`labelled_grid_size`);
- usage histogram: `USAGE_FIG_W x USAGE_FIG_H_PER_LEVEL * levels` inches at `DPI`;
- rate-distortion plot: `RD_FIG_W x RD_FIG_H` inches at `DPI`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .codebook import level_stats
from .metrics import to_uint8

DPI = 100
USAGE_FIG_W, USAGE_FIG_H_PER_LEVEL = 8.0, 2.5
RD_FIG_W, RD_FIG_H = 6.0, 4.0
GRID_PAD_VALUE = 128


def _hwc_uint8(x: torch.Tensor) -> np.ndarray:
    # (N, C, H, W) in [-1, 1] (or uint8) -> (N, H, W, 3) uint8; gray images are repeated to RGB
    u = x if x.dtype == torch.uint8 else to_uint8(x)
    u = u.detach().cpu()
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    return u.permute(0, 2, 3, 1).contiguous().numpy()


def grid_size(n: int, height: int, width: int, ncol: int = 8, pad: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of `reconstruction_grid` for n image pairs of height x width."""
    cols = min(n, ncol)
    rows = 2 * math.ceil(n / ncol)
    return cols * width + (cols + 1) * pad, rows * height + (rows + 1) * pad


def reconstruction_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) inputs and reconstructions -> (H_grid, W_grid, 3) uint8, inputs above their reconstructions."""
    if inputs.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {tuple(inputs.shape)} vs {tuple(reconstructions.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("no images to show")
    a, b = _hwc_uint8(inputs), _hwc_uint8(reconstructions)
    n, h, w, _ = a.shape
    gw, gh = grid_size(n, h, w, ncol, pad)
    out = np.full((gh, gw, 3), GRID_PAD_VALUE, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        x0 = pad + c * (w + pad)
        for k, img in enumerate((a[i], b[i])):
            y0 = pad + (2 * r + k) * (h + pad)
            out[y0:y0 + h, x0:x0 + w] = img
    return out


def save_reconstruction_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                             ncol: int = 8, pad: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(reconstruction_grid(inputs, reconstructions, ncol, pad)).save(path)
    return path


# --- labelled grid: what a person looks at ------------------------------------------------------------------------
LABEL_MIN_TILE = 128  # small crops are enlarged (nearest neighbour, integer factor) to at least this many pixels
LABEL_MARGIN = 118  # left column with the row names
LABEL_CAPTION = 18  # strip under each reconstruction with its PSNR
LABEL_TITLE = 24
LABEL_PAD = 4
LABEL_BACKGROUND = (32, 32, 32)
LABEL_TEXT = (235, 235, 235)


def enlargement(height: int, width: int, min_tile: int = LABEL_MIN_TILE) -> int:
    """Integer nearest-neighbour factor that makes the larger side of an image at least `min_tile` pixels."""
    return max(1, math.ceil(min_tile / max(height, width)))


def labelled_grid_size(n: int, height: int, width: int, ncol: int = 8, min_tile: int = LABEL_MIN_TILE,
                       title: bool = True) -> tuple[int, int]:
    """(width, height) in pixels of `labelled_grid` for n image pairs of height x width."""
    s = enlargement(height, width, min_tile)
    th, tw = height * s, width * s
    cols, blocks = min(n, ncol), math.ceil(n / ncol)
    block_h = 2 * th + LABEL_CAPTION + 2 * LABEL_PAD
    return (LABEL_MARGIN + cols * (tw + LABEL_PAD) + LABEL_PAD,
            (LABEL_TITLE if title else 0) + blocks * block_h + LABEL_PAD)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def labelled_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, ncol: int = 8, title: str | None = None,
                  min_tile: int = LABEL_MIN_TILE) -> np.ndarray:
    """Originals above their reconstructions, enlarged with nearest neighbour, rows named, each reconstruction
    captioned with its PSNR (dB, 8-bit, as `vqforge.eval.metrics`). (N, C, H, W) pairs -> (H_grid, W_grid, 3) uint8.

    Blocks of `ncol` pairs repeat downwards: an "original" row, a "reconstruction" row and a caption strip.
    """
    from PIL import ImageDraw

    from .metrics import psnr_per_image

    if inputs.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {tuple(inputs.shape)} vs {tuple(reconstructions.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("no images to show")
    a, b = _hwc_uint8(inputs), _hwc_uint8(reconstructions)
    psnr = psnr_per_image(inputs.detach().cpu(), reconstructions.detach().cpu()).tolist()
    n, h, w, _ = a.shape
    s = enlargement(h, w, min_tile)
    th, tw = h * s, w * s
    gw, gh = labelled_grid_size(n, h, w, ncol, min_tile, title is not None)
    canvas = Image.new("RGB", (gw, gh), LABEL_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    y_top = 0
    if title is not None:
        draw.text((LABEL_PAD, 4), title, fill=LABEL_TEXT, font=font)
        y_top = LABEL_TITLE
    block_h = 2 * th + LABEL_CAPTION + 2 * LABEL_PAD
    for i in range(n):
        r, c = divmod(i, ncol)
        x0 = LABEL_MARGIN + c * (tw + LABEL_PAD)
        y0 = y_top + r * block_h + LABEL_PAD
        for k, img in enumerate((a[i], b[i])):
            big = img.repeat(s, axis=0).repeat(s, axis=1)  # nearest neighbour: the pixels as they are
            canvas.paste(Image.fromarray(big), (x0, y0 + k * (th + LABEL_PAD)))
        p = psnr[i]
        cap = f"#{i + 1}  {p:.1f} dB" if math.isfinite(p) else f"#{i + 1}  exact"
        draw.text((x0 + 2, y0 + 2 * th + LABEL_PAD + 2), cap, fill=LABEL_TEXT, font=small)
        if c == 0:
            draw.text((LABEL_PAD, y0 + th // 2 - 8), "original", fill=LABEL_TEXT, font=font)
            draw.text((LABEL_PAD, y0 + th + LABEL_PAD + th // 2 - 8), "reconstruction", fill=LABEL_TEXT, font=font)
            draw.text((LABEL_PAD, y0 + 2 * th + LABEL_PAD + 2), f"x{s} nearest", fill=LABEL_TEXT, font=small)
    return np.asarray(canvas, dtype=np.uint8).copy()


def save_labelled_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, ncol: int = 8,
                       title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labelled_grid(inputs, reconstructions, ncol, title)).save(path)
    return path


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def usage_figure_size(levels: int) -> tuple[int, int]:
    """(width, height) in pixels of the usage histogram PNG."""
    return round(USAGE_FIG_W * DPI), round(USAGE_FIG_H_PER_LEVEL * levels * DPI)


def plot_usage_histogram(counts: Sequence[torch.Tensor], path: str | Path, title: str = "codebook usage") -> Path:
    """One panel per level: code counts sorted from most to least used (dead codes form the zero tail)."""
    if not counts:
        raise ValueError("no codebook histograms to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _new_figure(USAGE_FIG_W, USAGE_FIG_H_PER_LEVEL * len(counts))
    axes = fig.subplots(len(counts), 1, squeeze=False)[:, 0]
    for lvl, (ax, c) in enumerate(zip(axes, counts)):
        s = level_stats(c, lvl)
        vals = np.sort(c.detach().cpu().to(torch.float64).numpy())[::-1]
        ax.bar(np.arange(len(vals)), vals, width=1.0, color="tab:blue", linewidth=0)
        ax.set_xlim(-0.5, len(vals) - 0.5)
        ax.set_ylabel("count")
        name = f"level {lvl}" if len(counts) > 1 else title
        ax.set_title(f"{name}: {s.used}/{s.num_codes} codes used, {s.dead} dead, perplexity {s.perplexity:.1f}",
                     fontsize=9)
    axes[-1].set_xlabel("codes, most used first")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def rd_figure_size() -> tuple[int, int]:
    return round(RD_FIG_W * DPI), round(RD_FIG_H * DPI)


def plot_rate_distortion(bpp: Sequence[float], psnr: Sequence[float], path: str | Path,
                         title: str = "residual VQ: rate vs distortion") -> Path:
    """PSNR (dB) against bits per pixel, one point per residual depth prefix, labelled with the depth."""
    if len(bpp) != len(psnr) or not bpp:
        raise ValueError(f"need matching, non-empty bpp and psnr lists, got {len(bpp)} and {len(psnr)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _new_figure(RD_FIG_W, RD_FIG_H)
    ax = fig.subplots()
    ax.plot(bpp, psnr, marker="o")
    for d, (x, y) in enumerate(zip(bpp, psnr), start=1):
        ax.annotate(f"d={d}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("bits per pixel (log2 K per token)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.12)  # room for the depth labels
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Plain-text table with right-aligned columns; floats get 4 significant decimals."""

    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.4f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)
