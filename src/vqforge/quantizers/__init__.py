"""Quantizers: one file each; all return QuantizerOutput and can map indices back to codes."""

from __future__ import annotations

from ..config.schema import QuantizerConfig
from ..errors import ConfigError
from .base import Quantizer, QuantizerOutput
from .ema import EMAVectorQuantizer
from .gumbel import GumbelQuantizer
from .maintenance import MaintenanceConfig
from .product import ProductEMAQuantizer
from .residual import ResidualVectorQuantizer
from .residual_ema import ResidualEMAVectorQuantizer
from .sinkhorn import SinkhornQuantizer
from .vq import VectorQuantizer

KNOWN_VARIANTS = ("VQModel", "EMAVQ", "GumbelVQ", "PQEMAVQ")


def build_product(cfg: QuantizerConfig, n_embed: int, embed_dim: int) -> ProductEMAQuantizer:
    """Product quantizer: cfg.num_subspaces EMA codebooks of n_embed codes (decay, eps, beta from cfg)."""
    if cfg.rvq_levels > 1:
        raise ConfigError("model.quantizer.rvq_levels", "residual quantization is not available with product "
                          "quantization", "use rvq_levels: 1 (or variant EMAVQ for residual VQ)")
    if embed_dim % cfg.num_subspaces:
        raise ConfigError("model.quantizer.num_subspaces", f"embed_dim {embed_dim} is not divisible into "
                          f"{cfg.num_subspaces} subspaces", "choose num_subspaces dividing embed_dim")
    return ProductEMAQuantizer(n_embed, embed_dim, cfg.num_subspaces, beta=cfg.beta, decay=cfg.decay, eps=cfg.eps)


def build_quantizer(variant: str, cfg: QuantizerConfig, n_embed: int, embed_dim: int, in_channels: int) -> Quantizer:
    """The quantizer of a taming-family variant, configured by every QuantizerConfig field that applies to it.

    "VQModel" -> VectorQuantizer, "EMAVQ" -> EMAVectorQuantizer (each a ResidualVectorQuantizer of that kind when
    cfg.rvq_levels > 1; EMAVQ with shared_codebook and rvq_loss "prefix" -> ResidualEMAVectorQuantizer, the user's
    RVQ-VQGAN layout), "GumbelVQ" -> GumbelQuantizer (in_channels: channels of its input, for the 1x1 projection),
    "PQEMAVQ" -> ProductEMAQuantizer.
    """
    maintenance = MaintenanceConfig.from_config(cfg)
    if variant == "PQEMAVQ":
        return build_product(cfg, n_embed, embed_dim)
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
        if kind == "vq":
            return VectorQuantizer(n_embed, embed_dim, beta=cfg.beta, legacy=cfg.legacy, maintenance=maintenance)
        return EMAVectorQuantizer(n_embed, embed_dim, beta=cfg.beta, decay=cfg.decay, eps=cfg.eps,
                                  maintenance=maintenance)
    if variant == "GumbelVQ":
        if cfg.rvq_levels > 1:
            raise ConfigError("model.quantizer.rvq_levels", "residual quantization is not available with GumbelVQ",
                              "use variant VQModel or EMAVQ, or rvq_levels: 1")
        return GumbelQuantizer(
            in_channels, n_embed, embed_dim, kl_weight=cfg.kl_weight, straight_through=cfg.straight_through,
            temperature_start=cfg.temperature_start, temperature_end=cfg.temperature_end,
            temperature_anneal_steps=cfg.temperature_anneal_steps, temperature_schedule=cfg.temperature_schedule,
        )
    raise ConfigError("model.variant", f"unknown quantizer variant {variant!r}", f"use one of {list(KNOWN_VARIANTS)}")


__all__ = [
    "EMAVectorQuantizer",
    "GumbelQuantizer",
    "KNOWN_VARIANTS",
    "MaintenanceConfig",
    "ProductEMAQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "ResidualEMAVectorQuantizer",
    "ResidualVectorQuantizer",
    "SinkhornQuantizer",
    "build_product",
    "VectorQuantizer",
    "build_quantizer",
]
