"""Config: one typed schema (`schema.py`) and readers for the native, seed (and its later layout) and taming formats
(`readers.py`); `differences.py` lists where a run from the user's own files differs from the previous system."""

from .parse import field_paths, from_dict, to_dict
from .schema import Config, DataConfig, DDConfig, LogConfig, LossConfig, ModelConfig, QuantizerConfig, TrainConfig, VQVAE2Config
from .effects import ConfigWarning, ineffective_settings
from .readers import dump_yaml, load_config, load_config_with_warnings, parse_config, parse_config_with_warnings, to_native_dict

__all__ = [
    "Config", "DataConfig", "DDConfig", "LogConfig", "LossConfig", "ModelConfig", "QuantizerConfig", "TrainConfig",
    "VQVAE2Config", "field_paths", "from_dict", "to_dict", "load_config", "parse_config", "dump_yaml",
    "load_config_with_warnings", "parse_config_with_warnings", "ConfigWarning", "ineffective_settings", "to_native_dict",
]
