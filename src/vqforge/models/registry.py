"""Model registry: a decorator, a dict and `build`.

Families register a builder under a canonical name plus aliases; `build` resolves a ModelConfig to a module.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, aliases: tuple[str, ...] = ()):
    def deco(fn: Callable[..., nn.Module]):
        if name in _BUILDERS:
            raise ValueError(f"model family {name!r} registered twice")
        _BUILDERS[name] = fn
        for a in (name, *aliases):
            _ALIASES[a] = name
        return fn

    return deco


def _ensure_loaded() -> None:
    # importing the family modules runs their @register_model decorators
    from . import dalle_vqvae, patch, taming, vqvae2, vqvae2_optvq  # noqa: F401


def registered() -> list[str]:
    _ensure_loaded()
    return sorted(_BUILDERS)


def build(model_cfg, **kwargs) -> nn.Module:
    """Build the model described by a `ModelConfig`."""
    _ensure_loaded()
    name = _ALIASES.get(model_cfg.family)
    if name is None:
        raise ConfigError(
            "model.family",
            f"unknown model {model_cfg.family!r}",
            f"use one of {sorted(_ALIASES)}",
        )
    return _BUILDERS[name](model_cfg, **kwargs)
