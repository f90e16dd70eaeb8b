"""Quantizers: one file each; all return QuantizerOutput and can map indices back to codes."""

from .base import Quantizer, QuantizerOutput

__all__ = ["Quantizer", "QuantizerOutput"]
