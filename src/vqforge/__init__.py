"""vqforge: train, evaluate and use vector-quantized image and video tokenizers from one config file."""

from __future__ import annotations

from .errors import CheckpointError, ConfigError, DataError, TrainingError, VQForgeError

__version__ = "0.1.0"


def load_config(path, overrides=()):
    """Read a native, seed-format or taming config file into a validated `Config`."""
    from .config import load_config as _load

    return _load(path, overrides)


def build_model(config):
    """Build the tokenizer described by a `Config` (or a `ModelConfig`)."""
    from .models.registry import build

    model_cfg = getattr(config, "model", config)
    return build(model_cfg)


def from_pretrained(path, map_location="cpu"):
    """Load an exported tokenizer directory (config.json + model.safetensors)."""
    from .models.pretrained import from_pretrained as _fp

    return _fp(path, map_location=map_location)


__all__ = [
    "CheckpointError", "ConfigError", "DataError", "TrainingError", "VQForgeError",
    "load_config", "build_model", "from_pretrained", "__version__",
]
