"""Held-out quality and codebook usage of every quantizer under one protocol (README "Quantizers").

Protocol, identical for every row:
- data: the sample photos (`data.source: sample_photos`): the 10 training photos, shorter side resized to 128, random
  64×64 crops with horizontal flips, batch 4, the trainer's own stream;
- network (`--network`, the same for every row of a run), f4, ch 64: `taming` (the default, the earlier runs): the
  taming-family encoder/decoder, ch_mult [1, 1, 2], one res block per level, no attention, z_channels 64, about 2 s
  per step on one CPU thread; `patch`: the patch family (models/patch.py), factor 4, 64 channels, 2 gated residual
  blocks per side, all at the 16×16 token grid, 0.07–0.4 s per step, so that thousands of steps fit. Only the
  quantizer (and the width of the 1x1 quant_conv/post_quant_conv around it, i.e. the code dimension each quantizer
  works in) differs;
- training: vqforge's own `Trainer.train_step()` (built by `build_run`), L1 pixel loss + codebook loss, no GAN, no
  LPIPS, Adam (betas 0.5, 0.9), lr 1e-3 with 5 warm-up steps and a cosine decay to 1e-4, `--steps` steps, seed 0;
- evaluation on the two held-out photos (coffee, chelsea), never seen in training: at 64×64 f4 one crop is 256
  tokens, and one centre crop per photo (the training run's own validation set) is 512 tokens, far too few to ever
  use 16,384 codes. PSNR/SSIM per crop (uint8) and bits per pixel (log2 K per token) come from
  `vqforge.eval.evaluator.evaluate` over every non-overlapping 64×64 crop of each held-out photo resized to the
  shorter sides `--scales` (no upsampling). Usage, perplexity and dead codes are counted over those crops' tokens
  and, when K is more than a quarter of them, also over the (encode-only) crops at the shorter sides
  `--usage-scales`: other pixel grids of the same two photos, so that the held-out token count N is many times K.
  Each row reports N and what a code drawn uniformly at random would use on N tokens, 1 − (1 − 1/K)^N: usage
  cannot be judged against 100% when N is not far above K, and Chao1 (an estimate of the codes in use in the
  distribution the held-out tokens come from). `--more-heldout grace_hopper` adds a third real held-out photo
  (MORE_HELDOUT: outside the training split, shipped with matplotlib, public domain): usage, N and perplexity are then
  also reported over all three photos' tokens (every crop at every scale of both lists), next to the two-photo
  numbers. `--save-counts` keeps each measurement's per-code counts (OUT/counts/*.npz) for
  `bench/quality_counts.py`.

By default (`--jobs 1`) the configurations train in lockstep in this process with one thread: one step of each in
turn, each with its own copy of the global random states, so that every run is step for step the run it would be
alone (and an interrupted run has all configurations at the same step). `--eval-at S1 S2 ...` also measures every
configuration after those steps (the usage curve; such a row is a model in the middle of its cosine schedule, its
`step` below its `steps`); the last step is always measured. `--jobs N` runs N configurations at a time, each in its
own process. The table and JSON are rewritten after every measurement, so an interrupted run keeps what it
measured; at the end the table is printed (markdown) and plotted (usage and PSNR per quantizer at both codebook
sizes). K >= 16,384 comes first: that is where the quantizers differ.

    PYTHONPATH=src python bench/quality.py [--steps 30] [--jobs 1] [--eval-at 150 400] [--out bench/results/quality]
                                           [--network taming|patch] [--more-heldout grace_hopper] [--save-counts]
                                           [--scales 128 256 400] [--usage-scales 136 160 ... 400]
                                           [--only fsq-16384 lfq-512 ...]
    PYTHONPATH=src python bench/quality.py --merge DIR1 DIR2 --out DIR     (one table and plot from several runs)

Diagnostics outside the protocol (recorded in the JSON's meta): `--override '{"lfq_entropy_groups": 1}'` sets
model.quantizer keys on the rows of the quantizer they name, `--batch-size` changes every row's batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (quantizer section, n_embed, embed_dim). embed_dim is each quantizer's natural code width: FSQ the number
# of levels, LFQ log2 K (no extra projections); the codebook quantizers 16.
VQ_DIM = 16
CASES: dict[str, tuple[dict, int, int]] = {}
for k in (512, 16384):
    CASES[f"vq-{k}"] = ({"type": "vq"}, k, VQ_DIM)
    CASES[f"ema-restarts-{k}"] = ({"type": "ema", "decay": 0.99, "kmeans_init": True, "restart_unused_steps": 20},
                                  k, VQ_DIM)
    CASES[f"simvq-{k}"] = ({"type": "simvq"}, k, VQ_DIM)
    bits = k.bit_length() - 1
    # the batch entropy: exact over all K codes at K = 512; at K = 16,384 over 2 groups of 7 bits (the factorized
    # form), because the exact term costs about as much CPU time as the whole network at this size
    CASES[f"lfq-{k}"] = ({"type": "lfq", "lfq_entropy_groups": 1 if k <= 512 else 2}, k, bits)
levels = {512: [8, 8, 8], 16384: [8, 8, 8, 8, 4]}
for k, lv in levels.items():
    CASES[f"fsq-{k}"] = ({"type": "fsq", "fsq_levels": lv}, k, len(lv))
ORDER = [f"{q}-{k}" for k in (16384, 512) for q in ("fsq", "simvq", "lfq", "ema-restarts", "vq")]


# the f4, ch 64 networks the protocol can use (`--network`); every row of one run uses the same one
NETWORKS: dict[str, dict] = {
    # taming encoder/decoder: 3x3 convolutions at full, 1/2 and 1/4 resolution (about 2 s per step on one thread)
    "taming": {"family": "taming", "ddconfig": {"ch": 64, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
                                                "attn_resolutions": [], "z_channels": 64, "resolution": 64,
                                                "dropout": 0.0}},
    # patch family: 4x4 space-to-depth, 1x1 convolutions to 64 channels, 2 gated residual blocks per side, all at the
    # 16x16 token grid (models/patch.py; the quickstart's network at half its width)
    "patch": {"family": "patch", "patch": {"factor": 4, "channels": 64, "num_blocks": 2}},
}


# experiments only (`--override`, recorded in the JSON's meta): model.quantizer keys set on every row of a run
OVERRIDE: dict = {}
BATCH_SIZE = [4]  # the protocol's batch; `--batch-size` (a diagnostic, recorded in meta) changes it for every row


def case_config(name: str, steps: int, network: str = "taming") -> dict:
    quantizer, n_embed, embed_dim = CASES[name]
    quantizer = {**quantizer, **{k: v for k, v in OVERRIDE.items() if k.split("_")[0] in (quantizer["type"], "beta")}}
    return {
        "model": {
            **NETWORKS[network], "variant": "VQModel", "n_embed": n_embed, "embed_dim": embed_dim,
            "quantizer": {"beta": 0.25, **quantizer},
        },
        "loss": {"pixel_loss": "l1", "perceptual_weight": 0.0, "codebook_weight": 1.0, "use_gan": False},
        "data": {"source": "sample_photos", "resolution": 64, "resize": 128, "hflip": True,
                 "batch_size": BATCH_SIZE[0]},
        "train": {"num_steps": steps, "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 5, "min_lr": 1e-4,
                  "save_interval": 10**6, "validation_interval": 10**6, "seed": 0},
        "log": {"every": 10**6, "tensorboard": False, "progress": False},
    }


# more real held-out photos (`--more-heldout`): never in vqforge's sample-photo training split (which uses only
# skimage.data photos), shipped with an installed package (no download), licence stated
MORE_HELDOUT: dict[str, str] = {
    "grace_hopper": "matplotlib mpl-data/sample_data/grace_hopper.jpg (512x600): Commodore Grace M. Hopper, U.S. Navy "
                    "photograph by James S. Davis (1984), a work of the U.S. federal government, public domain",
}


def heldout_photos(names: list[str] | tuple[str, ...] = ("sample",)) -> list:
    """(H, W, 3) uint8 held-out photos: "sample" is the sample-photo split's held-out photos (coffee, chelsea), put
    back together from the split's tiles; other names are MORE_HELDOUT photos."""
    import numpy as np

    photos = []
    for name in names:
        if name == "sample":
            from vqforge.data.samples import VAL_TILES, sample_photo_split

            _, val = sample_photo_split()
            # the split cuts each held-out photo into VAL_TILES x VAL_TILES tiles: put every photo back together, so
            # that the larger shorter sides (up to the photo's own) exist and the crops cover the full resolution
            n = VAL_TILES * VAL_TILES
            photos += [np.concatenate([np.concatenate(val[i + r * VAL_TILES:i + (r + 1) * VAL_TILES], axis=1)
                                       for r in range(VAL_TILES)], axis=0) for i in range(0, len(val), n)]
        elif name == "grace_hopper":
            import matplotlib.cbook
            from PIL import Image

            with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
                photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        else:
            raise ValueError(f"unknown held-out photo {name!r}: use 'sample' or one of {sorted(MORE_HELDOUT)}")
    return photos


def heldout_crops(scales: list[int], flips: bool = False, names: list[str] | tuple[str, ...] = ("sample",)):
    """(N, 3, 64, 64) float in [-1, 1]: non-overlapping 64×64 crops of each held-out photo (`heldout_photos(names)`)
    at each shorter side (and of its mirror image with `flips`)."""
    import torch
    import torch.nn.functional as F

    crops = []
    for photo in heldout_photos(names):
        img = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W)
        h, w = img.shape[-2:]
        for s in scales:
            if s > min(h, w):
                continue  # never upsample: no invented detail
            size = (round(h * s / min(h, w)), round(w * s / min(h, w)))
            x = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False) if s != min(h, w) else img
            x = x.clamp(-1, 1)
            if flips:
                x = torch.cat([x, x.flip(-1)])
            for top in range(0, size[0] - 63, 64):
                for left in range(0, size[1] - 63, 64):
                    crops.extend(x[:, :, top:top + 64, left:left + 64])
    if not crops:
        return torch.zeros(0, 3, 64, 64)
    return torch.stack(crops)


def chao1(counts) -> dict:
    """f1, f2 (codes counted exactly once, twice) and Chao1 = S + f1²/(2 f2) (S + f1(f1 − 1)/2 when f2 = 0),
    capped at K: an estimate of the number of codes in use in the distribution the counted tokens were drawn from."""
    used = int((counts > 0).sum())
    f1, f2 = int((counts == 1).sum()), int((counts == 2).sum())
    est = used + (f1 * f1 / (2 * f2) if f2 > 0 else f1 * (f1 - 1) / 2)
    return {"singletons": f1, "doubletons": f2, "chao1": min(float(est), float(counts.numel()))}


def _rng_state() -> tuple:
    import random

    import numpy as np
    import torch

    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


class Case:
    """One configuration's training run (vqforge's `build_run` + `Trainer.train_step()`) and its measurement.

    Each case keeps its own copy of the process-global random states (torch, numpy, random), swapped in around its
    steps, so that cases trained in lockstep in one process are step for step the runs each would be alone."""

    def __init__(self, name: str, steps: int, run_dir: Path, network: str = "taming", counts_dir: Path | None = None):
        import torch

        torch.set_num_threads(1)
        from vqforge.config import parse_config
        from vqforge.train.build import build_run

        self.name, self.steps, self.network, self.counts_dir = name, steps, network, counts_dir
        self.run = build_run(parse_config(case_config(name, steps, network)), run_dir)
        self.trainer = self.run.trainer
        self.rng = _rng_state()  # build_run has just seeded them: the state a lone run starts its steps from
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    @property
    def step(self) -> int:
        return int(self.trainer.counters.step)

    def train_step(self) -> None:
        _set_rng_state(self.rng)
        t0 = time.perf_counter()
        self.trainer.train_step()
        self.train_seconds += time.perf_counter() - t0
        self.rng = _rng_state()

    def close(self) -> None:
        self.run.logger.close()

    def measure(self, crops, extra, more=None) -> dict:
        """Held-out PSNR/SSIM/bpp on `crops`; usage, perplexity and dead codes over the tokens of `crops` and, when
        K is more than a quarter of those, also of `extra` (encode only). With `more` (crops of more held-out photos)
        the same statistics again over all of those tokens plus the tokens of `more` (the `*_more` fields). The
        model's train/eval mode is restored."""
        import torch

        from vqforge.eval.evaluator import evaluate
        from vqforge.utils import unwrap_model

        t0 = time.perf_counter()
        _set_rng_state(self.rng)  # evaluation draws no random numbers in eval mode; keep the stream untouched anyway
        model = unwrap_model(self.trainer.model)
        was_training = model.training
        batches = (crops[i:i + 32] for i in range(0, len(crops), 32))
        result = evaluate(model, batches)
        counts = result.usage_counts[0].clone().to(torch.int64)
        k = counts.numel()

        def count(images):
            out = torch.zeros(k, dtype=torch.int64)
            model.eval()
            with torch.no_grad():
                for i in range(0, len(images), 32):
                    idx = model.encode(images[i:i + 32])
                    out += torch.bincount(idx.reshape(-1), minlength=k)
            return out

        if k > len(crops) * 256 // 4 and extra is not None and len(extra):
            # tokens of the PSNR set alone are too few for K codes: count more held-out tokens (encode only)
            counts += count(extra)
        counts_more = counts + count(more) if more is not None and len(more) else None
        model.train(was_training)
        self.rng = _rng_state()
        self.eval_seconds += time.perf_counter() - t0
        lvl = result.codebook[0]
        n = int(counts.sum())
        p = counts[counts > 0].double() / n
        entropy_bits = float(-(p * p.log2()).sum())
        if self.counts_dir is not None:  # the per-code counts, for analysis after the run (marginals, singletons)
            import numpy as np

            self.counts_dir.mkdir(parents=True, exist_ok=True)
            arrays = {"counts": counts.numpy().astype(np.int32)}
            if counts_more is not None:
                arrays["counts_more"] = counts_more.numpy().astype(np.int32)
            np.savez_compressed(self.counts_dir / f"{self.name}-step{self.step}.npz", **arrays)
        more_fields = {}
        if counts_more is not None:
            n_more = int(counts_more.sum())
            p_more = counts_more[counts_more > 0].double() / n_more
            bits_more = float(-(p_more * p_more.log2()).sum())
            more_fields = {"usage_more": float((counts_more > 0).double().mean()),
                           "chao1_more": chao1(counts_more)["chao1"],
                           "used_more": int((counts_more > 0).sum()), "heldout_tokens_more": n_more,
                           "perplexity_more": 2.0**bits_more, "usage_uniform_more": 1.0 - (1.0 - 1.0 / k) ** n_more}
        return {
            "name": self.name, "quantizer": self.name.rsplit("-", 1)[0], "K": k, "embed_dim": CASES[self.name][2],
            "network": self.network, "steps": self.steps, "step": self.step,
            "psnr": result.psnr, "ssim": result.ssim, "bpp": result.bpp, "psnr_crops": result.num_images,
            # usage over all counted held-out tokens (the PSNR crops plus, at large K, the extra encode-only tiles)
            "usage": float((counts > 0).double().mean()), "used": int((counts > 0).sum()),
            "dead": int((counts == 0).sum()), "perplexity": 2.0**entropy_bits, "entropy_bits": entropy_bits,
            "heldout_tokens": n, "usage_psnr_set": lvl.usage, "tokens_psnr_set": lvl.tokens,
            # what a code drawn uniformly at random would use on n tokens: 1 - (1 - 1/K)^n
            "usage_uniform": 1.0 - (1.0 - 1.0 / k) ** n,
            # codes seen exactly once and twice, and Chao1's lower-bound estimate of how many codes the model would
            # use on unlimited held-out tokens of this kind, S + f1²/(2 f2) (Chao 1984): if it is far above `used`,
            # usage is limited by N, not by the model
            **chao1(counts),
            "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds, **more_fields,
        }


def run_cases(names: list[str], steps: int, scales: list[int], usage_scales: list[int], eval_at: list[int],
              on_result, log_every: int = 50, network: str = "taming", more_heldout: list[str] | None = None,
              counts_dir: Path | None = None) -> None:
    """Train `names` in lockstep (one step of each in turn, one thread) for `steps` steps; after each step in
    `eval_at` (and after the last) measure every case on the held-out crops and call on_result(row). A row's `step`
    is the step it was measured after and `steps` the length of its learning-rate schedule: an intermediate row is a
    model in the middle of its cosine schedule, not one trained for `step` steps alone."""
    crops = heldout_crops(scales)
    extra = heldout_crops(usage_scales) if usage_scales else None
    # the more held-out photos: every crop at every scale of both lists, encode only (usage statistics)
    more = heldout_crops(sorted(set(scales) | set(usage_scales)), names=more_heldout) if more_heldout else None
    checkpoints = sorted({s for s in eval_at if 0 < s < steps} | {steps})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vqforge-quality-") as tmp:
        cases = [Case(name, steps, Path(tmp) / name, network, counts_dir) for name in names]
        for step in range(1, steps + 1):
            for case in cases:
                case.train_step()
            if step % log_every == 0:
                print(f"step {step}/{steps}: " + ", ".join(f"{c.name} {c.train_seconds / step:.2f} s/step"
                                                           for c in cases)
                      + f"; {(time.perf_counter() - t0) / 60:.1f} min, load {os.getloadavg()[0]:.1f}", flush=True)
            if step in checkpoints:
                for case in cases:
                    on_result(case.measure(crops, extra, more))
        for case in cases:
            case.close()


def markdown(rows: list[dict]) -> str:
    head = ("| quantizer | K | code dim | held-out PSNR (dB) | SSIM | usage | used / K | held-out tokens N "
            "| uniform code on N | perplexity | Chao1 codes in use | bits/pixel |")
    more = any("usage_more" in r for r in rows)
    if more:
        head += " usage, more held-out photos too | N there | uniform code on N there | perplexity there |"
    out = [head, "|" + "---|" * (16 if more else 12)]
    for r in rows:
        out.append(f"| {r['quantizer']} | {r['K']:,} | {r['embed_dim']} | {r['psnr']:.2f} | {r['ssim']:.3f} "
                   f"| {100 * r['usage']:.1f}% | {r['used']:,} / {r['K']:,} | {r['heldout_tokens']:,} "
                   f"| {100 * r['usage_uniform']:.1f}% | {r['perplexity']:.0f} | {_chao(r)} | {r['bpp']:.3f} |"
                   + _more_cells(r, more))
    return "\n".join(out)


def _chao(r: dict) -> str:
    return f"{r['chao1']:,.0f}" if "chao1" in r else ""


def _more_cells(r: dict, more: bool) -> str:
    if not more:
        return ""
    if "usage_more" not in r:
        return " | | | |"
    return (f" {100 * r['usage_more']:.1f}% | {r['heldout_tokens_more']:,} | {100 * r['usage_uniform_more']:.1f}% "
            f"| {r['perplexity_more']:.0f} |")


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    quantizers = list(dict.fromkeys(r["quantizer"] for r in rows))
    for col, (key, label) in enumerate((("usage", "held-out codebook usage"), ("psnr", "held-out PSNR (dB)"))):
        ax = fig.add_subplot(1, 2, col + 1)
        width = 0.8 / 2
        for j, big in enumerate((False, True)):
            vals = []
            for q in quantizers:
                match = [r for r in rows if r["quantizer"] == q and (r["K"] >= 16384) == big]
                vals.append(100 * match[0][key] if match and key == "usage" else (match[0][key] if match else 0.0))
            xs = [i + (j - 0.5) * width for i in range(len(quantizers))]
            ax.bar(xs, vals, width=width, label="K >= 16,384" if big else "K ~ 512")
            if key == "usage":  # usage over the held-out tokens of the more held-out photos too
                more = [(x, 100 * m[0]["usage_more"]) for x, q in zip(xs, quantizers)
                        for m in [[r for r in rows if r["quantizer"] == q and (r["K"] >= 16384) == big]]
                        if m and "usage_more" in m[0]]
                if more:
                    ax.scatter([x for x, _ in more], [v for _, v in more], color="black", marker="_", s=200,
                               zorder=3, label="with the more held-out photos" if big else None)
        ax.set_xticks(range(len(quantizers)))
        ax.set_xticklabels(quantizers, rotation=20)
        ax.set_title(label)
        if key == "usage":
            ax.set_ylim(0, 105)
            ax.set_ylabel("% of codes used")
            ax.axhline(98, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_curve(points: list[dict], path: Path) -> None:
    """Held-out usage and PSNR against the step each was measured after, one line per configuration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    names = [n for n in ORDER if any(p["name"] == n for p in points)]
    for col, (key, label) in enumerate((("usage", "held-out codebook usage (%)"), ("psnr", "held-out PSNR (dB)"))):
        ax = fig.add_subplot(1, 2, col + 1)
        for name in names:
            pts = sorted((p["step"], p[key]) for p in points if p["name"] == name)
            ax.plot([s for s, _ in pts], [100 * v if key == "usage" else v for _, v in pts], marker="o", label=name)
        if key == "usage":
            ax.set_ylim(0, 105)
            ax.axhline(98, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training step")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def curve_markdown(points: list[dict]) -> str:
    """Usage and PSNR against the step each was measured after, one row per (quantizer, K, step)."""
    more = any("usage_more" in r for r in points)
    head = ("| quantizer | K | step / schedule | held-out PSNR (dB) | usage | used / K | held-out tokens N "
            "| uniform code on N | perplexity | Chao1 codes in use |")
    if more:
        head += " usage, more held-out photos too | N there | uniform code on N there | perplexity there |"
    out = [head, "|" + "---|" * (14 if more else 10)]
    for r in sorted(points, key=lambda r: (ORDER.index(r["name"]), r["step"])):
        out.append(f"| {r['quantizer']} | {r['K']:,} | {r['step']} / {r['steps']} | {r['psnr']:.2f} "
                   f"| {100 * r['usage']:.1f}% | {r['used']:,} / {r['K']:,} | {r['heldout_tokens']:,} "
                   f"| {100 * r['usage_uniform']:.1f}% | {r['perplexity']:.0f} | {_chao(r)} |" + _more_cells(r, more))
    return "\n".join(out)


def merge(folders: list[Path], out: Path) -> None:
    """One table, curve table and plots in `out` from several runs' quality.json (each run's meta kept)."""
    rows, points, metas = [], [], []
    for folder in folders:
        data = json.loads((folder / "quality.json").read_text())
        rows += data["rows"]
        points += data["curve"]
        metas.append({"folder": str(folder), **data["meta"]})
    rows.sort(key=lambda r: ORDER.index(r["name"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"meta": {"merged": metas}, "rows": rows, "curve": points},
                                                 indent=2) + "\n")
    text = markdown(rows) + "\n"
    if len({p["step"] for p in points}) > 1:
        text += "\nUsage against training steps:\n\n" + curve_markdown(points) + "\n"
    (out / "quality.md").write_text(text)
    plot(rows, out / "quality.png")
    if len({p["step"] for p in points}) > 1:
        plot_curve(points, out / "quality_curve.png")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=1,
                    help="processes (one thread each); 1 trains every configuration in lockstep in this process")
    ap.add_argument("--eval-at", type=int, nargs="*", default=[],
                    help="also measure every configuration after these steps (the usage curve); the last step always")
    ap.add_argument("--scales", type=int, nargs="+", default=[128, 256, 400],
                    help="shorter sides of the held-out photos for the PSNR/SSIM crops (no upsampling)")
    ap.add_argument("--usage-scales", type=int, nargs="*", default=list(range(136, 401, 24)),
                    help="more shorter sides whose crops are only encoded, to count usage at large K")
    ap.add_argument("--network", choices=list(NETWORKS), default="taming",
                    help="the f4, ch 64 network every row uses: taming encoder/decoder (the earlier runs) or the "
                         "patch family (several times cheaper per step)")
    ap.add_argument("--more-heldout", nargs="*", choices=list(MORE_HELDOUT), default=[],
                    help="more real held-out photos: usage is then also reported over coffee, chelsea and these")
    ap.add_argument("--override", type=json.loads, default={},
                    help="experiments: JSON of model.quantizer keys for the rows whose type prefixes the key (e.g. "
                         "'{\"lfq_entropy_groups\": 1}'); not part of the protocol")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="train nothing: merge the rows and curves of these result folders' quality.json into OUT "
                         "(one table, curve table and plots)")
    ap.add_argument("--batch-size", type=int, default=4,
                    help="training batch of every row (the protocol's is 4; other values are diagnostics)")
    ap.add_argument("--save-counts", action="store_true",
                    help="also write each measurement's per-code held-out counts to OUT/counts/NAME-stepS.npz")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality")
    ap.add_argument("--only", nargs="+", choices=list(CASES), default=None)
    ap.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    OVERRIDE.update(args.override)
    BATCH_SIZE[0] = args.batch_size

    if args.case:
        run_cases([args.case], args.steps, args.scales, args.usage_scales, args.eval_at,
                  lambda r: print("RESULT " + json.dumps(r), flush=True), network=args.network,
                  more_heldout=args.more_heldout, counts_dir=args.out / "counts" if args.save_counts else None)
        return

    if args.merge:
        merge(args.merge, args.out)
        return

    names = [n for n in ORDER if args.only is None or n in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    results: dict[str, dict] = {}
    points: list[dict] = []

    def write() -> list[dict]:
        rows = [results[n] for n in names if n in results]
        meta = {"steps": args.steps, "network": args.network, "network_config": NETWORKS[args.network],
                "more_heldout": {n: MORE_HELDOUT[n] for n in args.more_heldout}, "override": args.override,
                "batch_size": args.batch_size,
                "jobs": args.jobs,
                "eval_at": args.eval_at, "scales": args.scales,
                "usage_scales": args.usage_scales, "configurations": names,
                "wall_seconds": time.perf_counter() - t0, "load_average_start": load0,
                "load_average_end": os.getloadavg(), "cpus": os.cpu_count(), "threads_per_run": 1}
        (args.out / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows, "curve": points},
                                                          indent=2) + "\n")
        text = markdown(rows) + "\n"
        if len({p["step"] for p in points}) > 1:
            text += "\nUsage against training steps (measured during the runs above):\n\n" + curve_markdown(points) + "\n"
        (args.out / "quality.md").write_text(text)
        return rows

    def done(r: dict) -> None:
        points.append(r)
        if r["step"] == r["steps"]:
            results[r["name"]] = r
        print(f"{r['name']} after {r['step']}/{r['steps']} steps: PSNR {r['psnr']:.2f} dB, usage "
              f"{100 * r['usage']:.1f}% of {r['K']:,} on N = {r['heldout_tokens']:,}, train {r['train_seconds']:.0f}s, "
              f"eval {r['eval_seconds']:.0f}s", flush=True)
        write()

    if args.jobs <= 1:
        run_cases(names, args.steps, args.scales, args.usage_scales, args.eval_at, done, network=args.network,
                  more_heldout=args.more_heldout, counts_dir=args.out / "counts" if args.save_counts else None)
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        pending, running = list(names), []
        with tempfile.TemporaryDirectory(prefix="vqforge-quality-logs-") as logs:
            while pending or running:
                while pending and len(running) < args.jobs:
                    name = pending.pop(0)
                    cmd = [sys.executable, __file__, "--case", name, "--steps", str(args.steps), "--scales",
                           *map(str, args.scales), "--usage-scales", *map(str, args.usage_scales),
                           "--eval-at", *map(str, args.eval_at), "--network", args.network,
                           "--more-heldout", *args.more_heldout, "--out", str(args.out),
                           "--override", json.dumps(args.override), "--batch-size", str(args.batch_size)]
                    if args.save_counts:
                        cmd.append("--save-counts")
                    log = open(Path(logs) / f"{name}.log", "w+")  # a file, not a pipe: a full pipe would block
                    running.append((name, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                                text=True, env=env)))
                time.sleep(1.0)
                for name, log, proc in list(running):
                    if proc.poll() is None:
                        continue
                    running.remove((name, log, proc))
                    log.seek(0)
                    text = log.read()
                    log.close()
                    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
                    if proc.returncode != 0 or not lines:
                        print(f"{name}: FAILED (exit {proc.returncode})\n{text[-3000:]}", flush=True)
                    for line in lines:
                        done(json.loads(line[len("RESULT "):]))
    rows = write()
    if rows:
        plot(rows, args.out / "quality.png")
    if len({p["step"] for p in points}) > 1:
        plot_curve(points, args.out / "quality_curve.png")
    print(markdown(rows))
    load1 = os.getloadavg()
    print(f"\n{len(rows)}/{len(names)} configurations, {(time.perf_counter() - t0) / 60:.1f} min wall, "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs; "
          f"wrote {args.out}/quality.{{json,md,png}}")


if __name__ == "__main__":
    main()
