"""Pictures and tables of evaluation results: codebook-usage histogram, rate-distortion plot, text tables.
(The reconstruction grids are in `vqforge.images`: training writes them too.)

Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global state). Image sizes are fixed by the
figure size and DPI so that callers and tests know them in advance:
- usage histogram: `USAGE_FIG_W x USAGE_FIG_H_PER_LEVEL * levels` inches at `DPI`;
- rate-distortion plot: `RD_FIG_W x RD_FIG_H` inches at `DPI`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .codebook import level_stats

DPI = 100
USAGE_FIG_W, USAGE_FIG_H_PER_LEVEL = 8.0, 2.5
RD_FIG_W, RD_FIG_H = 6.0, 4.0


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
