"""`vqforge info MODEL`: what a tokenizer is and what its tokens cost.

MODEL is an exported directory, a checkpoint directory or a run directory (its latest checkpoint). Printed: the
config summary (family, variant, quantizer, codebook layout, training resolution), parameter counts, K (codes per
index map: per residual depth, product subspace or hierarchy level), the downsampling factor f of each map, tokens per
image at --resolution (default: the model's training resolution), and the uniform code length: log2(K) bits per
token, their sum per image and per pixel (the rate `vqforge eval` reports as bits per pixel; an entropy model
(`vqforge entropy`) codes below it).

The token counts are not computed from a formula: one black R x R image is encoded and its index maps are measured,
so they are exactly what `vqforge encode` would write.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config.schema import HIERARCHICAL_FAMILIES, Config
from ..errors import ConfigError


@dataclass
class TokenMap:
    """One index map per image: a residual depth, a product subspace or a hierarchy level."""

    num_codes: int  # K
    height: int  # tokens
    width: int
    downsample: int  # f: input pixels per token along each side

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.num_codes)


@dataclass
class ModelInfo:
    source: str
    family: str
    variant: str | None
    quantizer: str
    embed_dim: int
    training_resolution: int
    parameters: int
    trainable_parameters: int
    parameters_by_part: dict[str, int]
    layout: str  # single | residual | hierarchical
    resolution: int
    maps: list[TokenMap] = field(default_factory=list)

    @property
    def tokens_per_image(self) -> int:
        return sum(m.tokens for m in self.maps)

    @property
    def bits_per_image(self) -> float:
        return sum(m.tokens * m.bits_per_token for m in self.maps)

    @property
    def bits_per_pixel(self) -> float:
        return self.bits_per_image / (self.resolution * self.resolution)

    def to_json(self) -> dict:
        doc = asdict(self)
        for m, d in zip(self.maps, doc["maps"]):
            d.update(tokens=m.tokens, bits_per_token=m.bits_per_token)
        doc.update(tokens_per_image=self.tokens_per_image, bits_per_image=self.bits_per_image,
                   bits_per_pixel=self.bits_per_pixel)
        return doc


def _embed_dim(cfg: Config) -> int:
    m = cfg.model
    if m.family in HIERARCHICAL_FAMILIES:
        return m.arch.embed_dim
    if m.family == "dalle_vqvae":
        return m.dalle_vqvae.n_init
    return m.embed_dim


@torch.no_grad()
def describe(model: nn.Module, cfg: Config, source: str, resolution: int | None = None) -> ModelInfo:
    """The `ModelInfo` of a loaded tokenizer at `resolution` (default: its training resolution)."""
    from ..eval.codebook import index_layout, split_levels
    from ..eval.evaluator import codebook_sizes

    if resolution is not None and resolution < 1:
        raise ConfigError("--resolution", f"must be >= 1, got {resolution}", "use e.g. 256")
    size = cfg.data.resolution if resolution is None else resolution
    cfg.model.check_resolution(size, "--resolution")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        indices = model.encode(torch.zeros(1, cfg.model.in_channels, size, size, device=device))
    finally:
        model.train(was_training)
    maps = split_levels(indices)
    ks = codebook_sizes(model)
    params = list(model.parameters())
    by_part: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        by_part[part] = by_part.get(part, 0) + p.numel()
    return ModelInfo(
        source=source, family=cfg.model.family, variant=cfg.model.variant,
        quantizer=cfg.model.quantizer_choice().type, embed_dim=_embed_dim(cfg),
        training_resolution=cfg.data.resolution, parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        parameters_by_part=by_part, layout=index_layout(indices), resolution=size,
        maps=[TokenMap(num_codes=k, height=int(m.shape[1]), width=int(m.shape[2]), downsample=size // int(m.shape[1]))
              for k, m in zip(ks, maps)],
    )


def _short(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _fmt_count(n: int) -> str:
    return f"{n:,} ({_short(n)})"


def format_info(info: ModelInfo) -> str:
    from ..eval.report import format_table

    name = {"single": "map", "residual": "depth", "hierarchical": "level"}[info.layout]
    lines = [
        f"model:       {info.source}",
        f"family:      {info.family}" + (f" ({info.variant})" if info.variant else ""),
        f"quantizer:   {info.quantizer}, code dimension {info.embed_dim}, {info.layout} index layout"
        + (f", {len(info.maps)} maps" if len(info.maps) > 1 else ""),
        f"parameters:  {_fmt_count(info.parameters)}, trainable {_fmt_count(info.trainable_parameters)}",
        "             " + ", ".join(f"{k} {_short(v)}" for k, v in info.parameters_by_part.items()),
        f"resolution:  {info.resolution}x{info.resolution} (trained at {info.training_resolution})",
        "",
        format_table([[i, m.num_codes, m.downsample, f"{m.height}x{m.width}", m.tokens, m.bits_per_token]
                      for i, m in enumerate(info.maps)], [name, "K", "f", "tokens", "per image", "bits/token"]),
        "",
        f"tokens per image: {info.tokens_per_image}",
        f"bits per image:   {info.bits_per_image:.1f} (log2 K per token, uniform code)",
        f"bits per pixel:   {info.bits_per_pixel:.4f}",
    ]
    return "\n".join(lines)


def info_main(args: argparse.Namespace) -> int:
    from ..models.pretrained import load_any, resolve_model_dir

    model, cfg = load_any(args.model, ema=args.ema, map_location="cpu")
    source = str(resolve_model_dir(args.model)) if Path(args.model).is_dir() else str(args.model)
    info = describe(model, cfg, source, args.resolution)
    print(json.dumps(info.to_json(), indent=2) if args.json else format_info(info))
    return 0
