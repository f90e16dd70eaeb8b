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


# The rest of the public API, imported on first use (`import vqforge` stays light: no model or eval code loads
# until a name is asked for): module -> the names it gives, each under its own name.
_LAZY_BY_MODULE = {
    ".models.output": ["TokenizerOutput"],
    ".models.pretrained": ["save_pretrained"],
    ".models.convert": ["convert_taming_checkpoint"],
    ".models.taming_zoo": ["from_taming"],
    ".eval.evaluator": ["evaluate"],
    ".train.build": ["build_run"],
    ".quantizers": ["Quantizer", "QuantizerOutput", "VectorQuantizer", "EMAVectorQuantizer", "GumbelQuantizer",
                    "ResidualVectorQuantizer", "MaintenanceConfig", "build_quantizer"],
}
_LAZY = {name: module for module, names in _LAZY_BY_MODULE.items() for name in names}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vqforge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointError", "ConfigError", "DataError", "TrainingError", "VQForgeError",
    "load_config", "build_model", "from_pretrained", "__version__", *_LAZY,
]
