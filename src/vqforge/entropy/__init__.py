"""Entropy models over token streams, and what the codec needs from them (see base.py)."""

from .base import (
    EntropyModel,
    FrameLayout,
    build_entropy_model,
    entropy_model_hash,
    load_entropy_model,
    register_entropy_model,
    registered_entropy_models,
    save_entropy_model,
)
from . import models as _models  # noqa: F401  (registers transformer_ar and masked_groups)

__all__ = [
    "EntropyModel",
    "FrameLayout",
    "build_entropy_model",
    "entropy_model_hash",
    "load_entropy_model",
    "register_entropy_model",
    "registered_entropy_models",
    "save_entropy_model",
]
