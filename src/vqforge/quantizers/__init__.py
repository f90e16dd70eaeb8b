"""Quantizers: one file each; all return QuantizerOutput and can map indices back to codes."""

from __future__ import annotations

from ..config.schema import QuantizerConfig
from ..errors import ConfigError
from .base import Quantizer, QuantizerOutput
from .ema import EMAVectorQuantizer
from .gumbel import GumbelQuantizer
from .maintenance import MaintenanceConfig
from .residual import ResidualVectorQuantizer
from .vq import VectorQuantizer

KNOWN_VARIANTS = ("VQModel", "EMAVQ", "GumbelVQ")


def build_quantizer(variant: str, cfg: QuantizerConfig, n_embed: int, embed_dim: int, in_channels: int) -> Quantizer:
    """The quantizer of a taming-family variant, configured by every QuantizerConfig field that applies to it.

    "VQModel" -> VectorQuantizer, "EMAVQ" -> EMAVectorQuantizer (each a ResidualVectorQuantizer of that kind when
    cfg.rvq_levels > 1), "GumbelVQ" -> GumbelQuantizer (in_channels: channels of its input, for the 1x1 projection).
    """
    maintenance = MaintenanceConfig.from_config(cfg)
    if variant in ("VQModel", "EMAVQ"):
        kind = "vq" if variant == "VQModel" else "ema"
        if cfg.rvq_levels > 1:
            return ResidualVectorQuantizer(
                cfg.rvq_levels, n_embed, embed_dim, kind=kind, shared_codebook=cfg.shared_codebook,
                beta=cfg.beta, legacy=cfg.legacy, decay=cfg.decay, eps=cfg.eps, maintenance=maintenance,
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
    "Quantizer",
    "QuantizerOutput",
    "ResidualVectorQuantizer",
    "VectorQuantizer",
    "build_quantizer",
]
