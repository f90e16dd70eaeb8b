"""Quantizers: one file each; all return QuantizerOutput and can map indices back to codes.

base.py holds the interface and the shared machinery of nearest-neighbour quantizers, assign.py the assignment math
(distances, nearest code, per-code counts and sums), maintenance.py k-means initialisation and dead-code restarts.
"""

from __future__ import annotations

from ..config.schema import QuantizerChoice, QuantizerConfig, resolve_quantizer
from ..errors import ConfigError
from .base import Quantizer, QuantizerOutput
from .ema import EMAVectorQuantizer
from .fsq import FSQuantizer
from .gumbel import GumbelQuantizer
from .lfq import LookupFreeQuantizer
from .maintenance import MaintenanceConfig
from .product import ProductEMAQuantizer
from .residual import ResidualVectorQuantizer
from .residual_ema import ResidualEMAVectorQuantizer
from .simvq import SimVQuantizer
from .sinkhorn import SinkhornQuantizer
from .vq import VectorQuantizer

KNOWN_VARIANTS = ("VQModel", "EMAVQ", "GumbelVQ", "PQEMAVQ")


def build_quantizer(variant: str, cfg: QuantizerConfig, n_embed: int, embed_dim: int, in_channels: int) -> Quantizer:
    """The quantizer of a taming-family variant, configured by every QuantizerConfig field that applies to it.

    "VQModel" -> VectorQuantizer, "EMAVQ" -> EMAVectorQuantizer (each a ResidualVectorQuantizer of that kind when
    cfg.rvq_levels > 1; EMAVQ with shared_codebook and rvq_loss "prefix" -> ResidualEMAVectorQuantizer, the user's
    RVQ-VQGAN layout), "GumbelVQ" -> GumbelQuantizer (in_channels: channels of its input, for the 1x1 projection),
    "PQEMAVQ" -> ProductEMAQuantizer. An explicit cfg.type chooses instead (fsq, simvq, lfq, product, or another of
    the above; see resolve_quantizer).
    """
    if variant not in KNOWN_VARIANTS:
        raise ConfigError("model.variant", f"unknown quantizer variant {variant!r}", f"use one of {list(KNOWN_VARIANTS)}")
    choice = resolve_quantizer("taming", variant, cfg, n_embed)  # rvq_levels and type against the variant
    if choice.type in TYPED_QUANTIZERS:
        return build_quantizer_of_type(choice, cfg, n_embed, embed_dim, in_channels)
    if choice.type == "ema" and variant == "VQModel":
        variant = "EMAVQ"  # VQModel with type: ema
    if choice.type == "gumbel":
        variant = "GumbelVQ"
    if choice.type == "residual":
        variant = "EMAVQ" if choice.residual_kind == "ema" else "VQModel"
    if choice.type == "product":
        variant = "PQEMAVQ"
    maintenance = MaintenanceConfig.from_config(cfg)
    if variant == "PQEMAVQ":
        if embed_dim % cfg.num_subspaces:
            raise ConfigError("model.quantizer.num_subspaces", f"embed_dim {embed_dim} is not divisible into "
                              f"{cfg.num_subspaces} subspaces", "choose num_subspaces dividing embed_dim")
        return ProductEMAQuantizer(n_embed, embed_dim, cfg.num_subspaces, beta=cfg.beta, decay=cfg.decay, eps=cfg.eps,
                                   maintenance=MaintenanceConfig.from_config(cfg))
    if variant in ("VQModel", "EMAVQ"):
        kind = "vq" if variant == "VQModel" else "ema"
        if cfg.rvq_levels > 1:
            if cfg.rvq_loss == "prefix":
                if kind != "ema" or not cfg.shared_codebook:
                    raise ConfigError("model.quantizer.rvq_loss", "the prefix loss belongs to the shared-EMA-codebook "
                                      "residual quantizer", "use variant EMAVQ with shared_codebook: true, or "
                                      "rvq_loss: per_level")
                return ResidualEMAVectorQuantizer(
                    cfg.rvq_levels, n_embed, embed_dim, beta=cfg.beta, decay=cfg.decay, eps=cfg.eps,
                    maintenance=maintenance, quantize_dropout=cfg.quantize_dropout,
                )
            return ResidualVectorQuantizer(
                cfg.rvq_levels, n_embed, embed_dim, kind=kind, shared_codebook=cfg.shared_codebook,
                beta=cfg.beta, legacy=cfg.legacy, decay=cfg.decay, eps=cfg.eps, maintenance=maintenance,
                quantize_dropout=cfg.quantize_dropout,
            )
        code_space = {"codebook_dim": cfg.codebook_dim, "cosine": cfg.use_cosine_sim}  # one level only
        if kind == "vq":
            return VectorQuantizer(n_embed, embed_dim, beta=cfg.beta, legacy=cfg.legacy, maintenance=maintenance,
                                   **code_space)
        return EMAVectorQuantizer(n_embed, embed_dim, beta=cfg.beta, decay=cfg.decay, eps=cfg.eps,
                                  maintenance=maintenance, **code_space)
    if variant == "GumbelVQ":
        return GumbelQuantizer(
            in_channels, n_embed, embed_dim, kl_weight=cfg.kl_weight, straight_through=cfg.straight_through,
            temperature_start=cfg.temperature_start, temperature_end=cfg.temperature_end,
            temperature_anneal_steps=cfg.temperature_anneal_steps, temperature_schedule=cfg.temperature_schedule,
        )
    raise ConfigError("model.variant", f"unknown quantizer variant {variant!r}", f"use one of {list(KNOWN_VARIANTS)}")


# quantizers chosen by model.quantizer.type alone (no taming variant of their own); each works in every family
TYPED_QUANTIZERS = ("fsq", "simvq", "lfq")


def build_quantizer_of_type(choice: QuantizerChoice, cfg: QuantizerConfig, n_embed: int, embed_dim: int,
                            in_channels: int) -> Quantizer:
    """One (B, H, W)-index quantizer of `choice.type` (not residual/product): the VQ-VAE-2 levels use this, and the
    taming family for fsq/simvq/lfq. in_channels: channels of the input (Gumbel's 1x1 projection only)."""
    t = choice.type
    if t == "fsq":
        return FSQuantizer(cfg.fsq_levels, embed_dim)
    if t == "simvq":
        return SimVQuantizer(n_embed, embed_dim, beta=cfg.beta, codebook_std=cfg.simvq_codebook_std)
    if t == "lfq":
        return LookupFreeQuantizer(
            n_embed, embed_dim, beta=cfg.beta, sample_entropy_weight=cfg.lfq_sample_entropy_weight,
            batch_entropy_weight=cfg.lfq_batch_entropy_weight, temperature=cfg.lfq_temperature,
            entropy_groups=cfg.lfq_entropy_groups,
        )
    if t in ("vq", "ema", "gumbel"):
        return build_quantizer({"vq": "VQModel", "ema": "EMAVQ", "gumbel": "GumbelVQ"}[t], cfg, n_embed, embed_dim,
                               in_channels)
    raise ConfigError("model.quantizer.type", f"{t!r} cannot be built as a single-map quantizer here",
                      "use vq, ema, gumbel, fsq, simvq or lfq")


__all__ = [
    "EMAVectorQuantizer",
    "FSQuantizer",
    "GumbelQuantizer",
    "KNOWN_VARIANTS",
    "LookupFreeQuantizer",
    "MaintenanceConfig",
    "ProductEMAQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "ResidualEMAVectorQuantizer",
    "ResidualVectorQuantizer",
    "SimVQuantizer",
    "SinkhornQuantizer",
    "TYPED_QUANTIZERS",
    "VectorQuantizer",
    "build_quantizer",
    "build_quantizer_of_type",
]
