"""One pass over a data set: every reconstruction metric, codebook statistics and the residual-VQ depth curve.

`evaluate` is what both `vqforge eval` and the trainer's validation call. Every quantity is accumulated as a sum
on each process and summed across processes (`vqforge.distributed.all_reduce_sum`) before the final division, so a
multi-process result equals the single-process result on the union of the shards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Literal

import torch
from torch import nn

from .. import distributed as dist
from ..config.schema import HIERARCHICAL_FAMILIES
from ..errors import DataError
from ..losses.reconstruction import pixel_loss as elementwise_pixel_loss
from .baselines import BaselineSpec, apply_baseline, baseline_specs, model_factor
from .codebook import (CodebookUsage, LevelStats, bits_per_pixel, bits_per_pixel_by_depth, index_layout,
                       tokens_per_image)
from .fid import FeatureStats, fid_from_stats
from .metrics import finite_or_none, mse_per_image, psnr_from_mse, psnr_per_image, ssim_per_image

# (x, y) -> per-image distance, any shape with N first (LPIPS returns (N, 1, 1, 1))
PairMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# [-1, 1] images (N, 3, H, W) -> (N, D) features
FeatureNet = Callable[[torch.Tensor], torch.Tensor]



@dataclass
class DepthPoint:
    """Residual VQ: quality when only the first `depth` levels are decoded."""

    depth: int
    bpp: float
    psnr: float
    ssim: float
    lpips: float | None = None


@dataclass
class BaselineResult:
    """A non-learned method (vqforge.eval.baselines) scored on the same images with the same metrics."""

    name: str  # "bicubic_x2", "bicubic_x4", "jpeg"
    method: str  # human-readable: "bicubic x4 down/up", "JPEG at <= 2 bpp"
    bpp: float  # mean bits per pixel it spends (bicubic: raw 24-bit pixels kept; JPEG: entropy-coded data)
    psnr: float
    psnr_aggregate: float
    ssim: float
    mse: float
    rec_loss: float
    lpips: float | None = None
    rfid: float | None = None
    jpeg_quality: float | None = None  # mean quality chosen by the bisection (JPEG only)

    def to_json(self) -> dict:
        d = asdict(self)
        d["psnr"] = finite_or_none(self.psnr)
        d["psnr_aggregate"] = finite_or_none(self.psnr_aggregate)
        return d


# slots for baselines in the cross-process sums: bicubic at the model's factor, bicubic at its rate, JPEG
_MAX_BASELINES = 3
_BASE_SUMS = ("n", "psnr", "mse", "ssim", "rec", "lpips", "bpp", "quality")


@dataclass
class EvalResult:
    num_images: int
    height: int
    width: int
    psnr: float  # dB, mean over images of the per-image PSNR (uint8-quantized, MAX 255)
    psnr_aggregate: float  # dB, PSNR of the mean MSE over the set
    ssim: float  # mean over images (Gaussian 11x11, sigma 1.5, channels averaged)
    mse: float  # mean squared error on the 0..255 scale
    rec_loss: float  # training pixel loss (`pixel_loss`, on [-1, 1] floats, unclamped), mean over images
    pixel_loss: str  # "l1" or "l2"
    lpips: float | None  # None when no LPIPS network was given (see `skipped`)
    rfid: float | None  # None when no feature network was given or fewer than 2 images
    layout: str  # "single" | "residual" | "hierarchical"
    bpp: float  # bits per pixel at log2(K) bits per token, all levels
    codebook: list[LevelStats]  # per level (residual depth or hierarchy level)
    # several levels: all of them together; one shared codebook (residual VQ with shared_codebook) pools the levels'
    # counts into its K codes, separate codebooks count each of their D*K codes once
    codebook_total: LevelStats | None = None
    depth_curve: list[DepthPoint] = field(default_factory=list)  # residual VQ only: depth 1..D
    baselines: list[BaselineResult] = field(default_factory=list)  # evaluate(baselines=True) only
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed
    seconds: float = 0.0
    # not part of the JSON: histograms for the usage plot and a few images for the reconstruction grid
    usage_counts: list[torch.Tensor] = field(default_factory=list, repr=False)
    sample_inputs: torch.Tensor | None = field(default=None, repr=False)
    sample_reconstructions: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        """Plain dict for json.dump; non-finite numbers (PSNR of a perfect reconstruction) become None."""
        out = {
            "num_images": self.num_images,
            "resolution": [self.height, self.width],
            "psnr": finite_or_none(self.psnr),
            "psnr_aggregate": finite_or_none(self.psnr_aggregate),
            "ssim": self.ssim,
            "mse": self.mse,
            "rec_loss": self.rec_loss,
            "pixel_loss": self.pixel_loss,
            "lpips": self.lpips,
            "rfid": self.rfid,
            "layout": self.layout,
            "bits_per_pixel": self.bpp,
            "codebook": [asdict(s) for s in self.codebook],
            "codebook_total": asdict(self.codebook_total) if self.codebook_total is not None else None,
            "depth_curve": [
                {**asdict(p), "psnr": finite_or_none(p.psnr)} for p in self.depth_curve
            ],
            "baselines": {b.name: b.to_json() for b in self.baselines},
            "skipped": dict(self.skipped),
            "seconds": self.seconds,
        }
        return out

    def baseline_scalars(self) -> dict[str, float]:
        """'<baseline>/<metric>' -> value for the baselines' PSNR, SSIM, LPIPS and bits per pixel."""
        s: dict[str, float] = {}
        for b in self.baselines:
            s[f"{b.name}/psnr"] = b.psnr
            s[f"{b.name}/ssim"] = b.ssim
            if b.lpips is not None:
                s[f"{b.name}/lpips"] = b.lpips
            if b.name == "jpeg":
                s[f"{b.name}/bpp"] = b.bpp
        return s

    def scalars(self) -> dict[str, float]:
        """Flat name -> float for loggers and best-checkpoint selection (metrics that were skipped are absent)."""
        s: dict[str, float] = {
            "psnr": self.psnr, "psnr_aggregate": self.psnr_aggregate, "ssim": self.ssim, "mse": self.mse,
            "rec_loss": self.rec_loss, "bpp": self.bpp,
        }
        if self.lpips is not None:
            s["lpips"] = self.lpips
        if self.rfid is not None:
            s["rfid"] = self.rfid
        multi = len(self.codebook) > 1
        for st in self.codebook:
            pre = f"l{st.level}/" if multi else ""
            s[f"{pre}usage"] = st.usage
            s[f"{pre}perplexity"] = st.perplexity
            s[f"{pre}dead_codes"] = float(st.dead)
        if multi and self.codebook_total is not None:
            s["usage"] = self.codebook_total.usage
            s["perplexity"] = self.codebook_total.perplexity
            s["dead_codes"] = float(self.codebook_total.dead)
        for p in self.depth_curve:
            s[f"depth{p.depth}/psnr"] = p.psnr
            if p.lpips is not None:
                s[f"depth{p.depth}/lpips"] = p.lpips
        return s


def codebook_sizes(model: nn.Module) -> list[int]:
    """Codebook size K of every index level the model emits (residual depths or hierarchy levels)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "family", None) in HIERARCHICAL_FAMILIES:
        return [int(getattr(model, "nb_entries", cfg.arch.nb_entries))] * cfg.arch.nb_levels
    k = getattr(model, "num_codes", None)
    if k is None and cfg is not None:
        k = cfg.n_embed
    if k is None:
        raise ValueError("cannot tell the model's codebook size: give it a `num_codes` attribute or a `config`")
    # index maps per position: residual depths, or product-quantization subspaces (`index_levels`)
    depth = int(getattr(model, "index_levels", None) or getattr(model, "depth", None)
                or (cfg.quantizer.rvq_levels if cfg is not None else 1))
    return [int(k)] * depth


def _images_for_this_rank(max_images: int | None) -> int | None:
    # split a global budget over processes so that the union is max_images images
    if max_images is None:
        return None
    w, r = dist.world_size(), dist.rank()
    return max_images // w + (1 if r < max_images % w else 0)


def _per_image(v: torch.Tensor, n: int) -> torch.Tensor:
    return v.reshape(n, -1).double().mean(dim=1)  # (N,)


def _pixel_loss(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Training's pixel loss per image: (N,) float64 means of `losses.reconstruction.pixel_loss`."""
    return elementwise_pixel_loss(x, y, kind).flatten(1).mean(dim=1).double()  # type: ignore[arg-type]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    lpips: PairMetric | None = None,
    inception: FeatureNet | None = None,
    max_images: int | None = None,
    pixel_loss: Literal["l1", "l2"] = "l1",
    depth_curve: bool = True,
    num_samples: int = 8,
    skipped: dict[str, str] | None = None,
    progress: bool = False,
    baselines: bool = False,
) -> EvalResult:
    """Evaluate `model` on `batches` of (N, C, H, W) images in [-1, 1], in one pass.

    lpips / inception: networks for LPIPS and rFID; None skips that metric (the reason goes into
    `EvalResult.skipped`, or pass your own reasons in `skipped`). max_images: total over all processes.
    depth_curve: residual VQ only, decode every depth prefix 1..D (D - 1 extra decoder passes per batch).
    baselines: also score bicubic down/up-sampling by the model's factor (and at its rate) and JPEG at the model's
    bits per pixel on the same images, with the same metrics (`EvalResult.baselines`; see vqforge.eval.baselines).
    The model is put in eval mode for the pass (an EMA codebook must not update) and restored afterwards.
    Under torchrun every process must call this (the sums are reduced collectively).
    """
    t0 = time.perf_counter()
    skipped = dict(skipped or {})
    if lpips is None:
        skipped.setdefault("lpips", "no LPIPS network given")
    if inception is None:
        skipped.setdefault("rfid", "no InceptionV3 feature network given")
    ks = codebook_sizes(model)
    levels = len(ks)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    usage = CodebookUsage(ks, levels=levels, device=device)
    limit = _images_for_this_rank(max_images)

    # per-image sums (float64): n, psnr, mse, ssim, rec_loss, lpips, and per depth: psnr, ssim, lpips
    sums = {"n": 0.0, "psnr": 0.0, "mse": 0.0, "ssim": 0.0, "rec": 0.0, "lpips": 0.0}
    depth_sums: list[list[float]] = []  # [d] -> [psnr, ssim, lpips]
    real_stats: FeatureStats | None = None
    fake_stats: FeatureStats | None = None
    shape = [0, 0]
    tokens: list[int] = [0] * levels
    layout: str | None = None
    samples_x: list[torch.Tensor] = []
    samples_y: list[torch.Tensor] = []
    n_samples = 0
    specs: list[BaselineSpec] = []
    base_sums = [dict.fromkeys(_BASE_SUMS, 0.0) for _ in range(_MAX_BASELINES)]
    base_stats: list[FeatureStats | None] = [None] * _MAX_BASELINES

    was_training = model.training
    model.eval()
    seen = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_images, unit="img", desc="eval", disable=not dist.is_main())
    try:
        for x in batches:
            if limit is not None and seen >= limit:
                break
            if x.ndim != 4:
                raise DataError(f"evaluation batches must be (N, C, H, W) images, got shape {tuple(x.shape)}")
            if limit is not None:
                x = x[: limit - seen]
            x = x.to(device)
            n = x.shape[0]
            if n == 0:
                continue
            if shape != [0, 0] and [x.shape[2], x.shape[3]] != shape:
                raise DataError(f"all evaluation images must have one size; got {shape} then {list(x.shape[2:])}; "
                                "center-crop them to one resolution")
            shape = [x.shape[2], x.shape[3]]
            out = model(x)
            y = out.reconstruction
            idx = out.indices
            if layout is None:
                layout = index_layout(idx)
                tokens = tokens_per_image(idx)
                if baselines:
                    specs = baseline_specs(model_factor(shape[0], shape[1], tokens),
                                           bits_per_pixel(tokens, ks, shape[0], shape[1]))
            usage.update(idx)

            mse = mse_per_image(x, y)
            sums["n"] += n
            sums["psnr"] += float(psnr_from_mse(mse).sum())
            sums["mse"] += float(mse.sum())
            ss = ssim_per_image(x, y)
            sums["ssim"] += float(ss.sum())
            sums["rec"] += float(_pixel_loss(x, y, pixel_loss).sum())
            lp = _per_image(lpips(x, y), n) if lpips is not None else None
            if lp is not None:
                sums["lpips"] += float(lp.sum())
            if inception is not None:
                fr, ff = inception(x), inception(y)
                if real_stats is None:
                    real_stats = FeatureStats.empty(fr.shape[-1], device)
                    fake_stats = FeatureStats.empty(fr.shape[-1], device)
                real_stats.update(fr)
                fake_stats.update(ff)
            # prefixes of residual depths only (a product quantizer's subspaces are not a coarse-to-fine order)
            if depth_curve and layout == "residual" and idx.shape[1] > 1 and getattr(model, "depth", 2) > 1:
                d_total = idx.shape[1]
                if not depth_sums:
                    depth_sums = [[0.0, 0.0, 0.0] for _ in range(d_total)]
                for d in range(1, d_total + 1):
                    # the full depth is the forward pass's reconstruction; prefixes are decoded
                    if d == d_total:
                        row = [float(psnr_from_mse(mse).sum()), float(ss.sum()),
                               float(lp.sum()) if lp is not None else 0.0]
                    else:
                        yd = model.decode(idx[:, :d])
                        row = [float(psnr_per_image(x, yd).sum()), float(ssim_per_image(x, yd).sum()),
                               float(_per_image(lpips(x, yd), n).sum()) if lpips is not None else 0.0]
                    depth_sums[d - 1] = [a + b for a, b in zip(depth_sums[d - 1], row)]
            for slot, spec in enumerate(specs):
                yb, bpp_b, q_b = apply_baseline(spec, x)
                mse_b = mse_per_image(x, yb)
                row = base_sums[slot]
                row["n"] += n
                row["psnr"] += float(psnr_from_mse(mse_b).sum())
                row["mse"] += float(mse_b.sum())
                row["ssim"] += float(ssim_per_image(x, yb).sum())
                row["rec"] += float(_pixel_loss(x, yb, pixel_loss).sum())
                if lpips is not None:
                    row["lpips"] += float(_per_image(lpips(x, yb), n).sum())
                row["bpp"] += float(bpp_b.sum())
                row["quality"] += float(q_b.sum())
                if inception is not None:
                    fb = inception(yb)
                    if base_stats[slot] is None:
                        base_stats[slot] = FeatureStats.empty(fb.shape[-1], device)
                    base_stats[slot].update(fb)  # type: ignore[union-attr]
            if n_samples < num_samples:
                take = min(num_samples - n_samples, n)
                samples_x.append(x[:take].detach().cpu())
                samples_y.append(y[:take].detach().float().cpu())
                n_samples += take
            seen += n
            if bar is not None:
                bar.update(n)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()

    # --- reduce across processes --------------------------------------------------------------------------------
    # header: facts every rank needs even if it saw no image (sizes, layout, depth count, feature width)
    has = 1.0 if sums["n"] > 0 else 0.0
    layout_code = {"single": 1, "residual": 2, "hierarchical": 3}.get(layout or "", 0)
    feat_dim = real_stats.total.numel() if real_stats is not None else 0
    header = torch.tensor([has, has * shape[0], has * shape[1], has * layout_code, has * feat_dim,
                           has * len(depth_sums)] + [has * t for t in tokens], dtype=torch.float64, device=device)
    dist.all_reduce_sum(header)
    ranks_with_data = header[0].item()
    if ranks_with_data == 0:
        raise DataError("no images were evaluated: the data set is empty (or --max-images is 0)")
    h_img, w_img, layout_code, feat_dim, n_depth = (round(v / ranks_with_data) for v in header[1:6].tolist())
    tokens = [round(v / ranks_with_data) for v in header[6:].tolist()]
    layout = {1: "single", 2: "residual", 3: "hierarchical"}[layout_code]

    if len(depth_sums) < n_depth:
        depth_sums = [[0.0, 0.0, 0.0] for _ in range(n_depth)]
    flat = [sums[k] for k in ("n", "psnr", "mse", "ssim", "rec", "lpips")] + [v for row in depth_sums for v in row]
    totals = dist.all_reduce_sum(torch.tensor(flat, dtype=torch.float64, device=device)).tolist()
    n_all, psnr_sum, mse_sum, ssim_sum, rec_sum, lpips_sum = totals[:6]
    depth_totals = [totals[6 + 3 * i: 9 + 3 * i] for i in range(n_depth)]
    usage.all_reduce()
    usage.tokens = tokens
    usage.layout = layout  # type: ignore[assignment]

    rfid = None
    if inception is not None:
        if real_stats is None:
            real_stats, fake_stats = FeatureStats.empty(feat_dim, device), FeatureStats.empty(feat_dim, device)
        real_stats.all_reduce()
        fake_stats.all_reduce()  # type: ignore[union-attr]
        if n_all >= 2:
            rfid = fid_from_stats(real_stats, fake_stats)  # type: ignore[arg-type]
        else:
            skipped["rfid"] = "rFID needs at least 2 images"

    bpp_depth = bits_per_pixel_by_depth(tokens, ks, h_img, w_img) if layout == "residual" else []
    curve = [
        DepthPoint(depth=d + 1, bpp=bpp_depth[d], psnr=t[0] / n_all, ssim=t[1] / n_all,
                   lpips=t[2] / n_all if lpips is not None else None)
        for d, t in enumerate(depth_totals)
    ]
    base_results: list[BaselineResult] = []
    if baselines:
        base_flat = torch.tensor([row[k] for row in base_sums for k in _BASE_SUMS], dtype=torch.float64, device=device)
        base_tot = dist.all_reduce_sum(base_flat).view(_MAX_BASELINES, len(_BASE_SUMS)).tolist()
        all_specs = baseline_specs(model_factor(h_img, w_img, tokens), bits_per_pixel(tokens, ks, h_img, w_img))
        for slot, spec in enumerate(all_specs):
            t = dict(zip(_BASE_SUMS, base_tot[slot]))
            nb = t["n"]
            b_rfid = None
            if inception is not None:
                st = base_stats[slot] or FeatureStats.empty(feat_dim, device)
                st.all_reduce()
                if nb >= 2:
                    b_rfid = fid_from_stats(real_stats, st)  # type: ignore[arg-type]
            base_results.append(BaselineResult(
                name=spec.name, method=spec.describe(), bpp=t["bpp"] / nb, psnr=t["psnr"] / nb,
                psnr_aggregate=float(psnr_from_mse(t["mse"] / nb)), ssim=t["ssim"] / nb, mse=t["mse"] / nb,
                rec_loss=t["rec"] / nb, lpips=t["lpips"] / nb if lpips is not None else None, rfid=b_rfid,
                jpeg_quality=t["quality"] / nb if spec.kind == "jpeg" else None))

    mean_mse = mse_sum / n_all
    return EvalResult(
        num_images=int(n_all),
        height=h_img,
        width=w_img,
        psnr=psnr_sum / n_all,
        psnr_aggregate=float(psnr_from_mse(mean_mse)),
        ssim=ssim_sum / n_all,
        mse=mean_mse,
        rec_loss=rec_sum / n_all,
        pixel_loss=pixel_loss,
        lpips=lpips_sum / n_all if lpips is not None else None,
        rfid=rfid,
        layout=layout,
        bpp=bits_per_pixel(tokens, ks, h_img, w_img),
        codebook=usage.stats(),
        codebook_total=usage.total_stats(shared=bool(getattr(getattr(model, "quantize", None), "shared_codebook",
                                                                 False))),
        depth_curve=curve,
        baselines=base_results,
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        usage_counts=[c.cpu() for c in usage.counts],
        sample_inputs=torch.cat(samples_x) if samples_x else None,
        sample_reconstructions=torch.cat(samples_y) if samples_y else None,
    )
