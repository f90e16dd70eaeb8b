"""Config: one typed schema (`schema.py`) and readers for the native, seed and taming formats (`readers.py`)."""

from .parse import field_paths, from_dict, to_dict
from .schema import Config, DataConfig, DDConfig, LogConfig, LossConfig, ModelConfig, QuantizerConfig, TrainConfig, VQVAE2Config
from .readers import dump_yaml, load_config, parse_config

__all__ = [
    "Config", "DataConfig", "DDConfig", "LogConfig", "LossConfig", "ModelConfig", "QuantizerConfig", "TrainConfig",
    "VQVAE2Config", "field_paths", "from_dict", "to_dict", "load_config", "parse_config", "dump_yaml",
]
