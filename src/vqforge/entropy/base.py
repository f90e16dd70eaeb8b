"""The contract between entropy models and the codec.

An entropy model predicts the tokens of one frame in a fixed order of *coding steps*. A step is a set of token
positions that the decoder reveals together: the model's prediction for them may use only tokens revealed by earlier
steps of the same frame and the tokens of the previous frame (None at an intra frame). The codec turns each step's
logits into integer frequencies and range-codes the step's tokens; the decoder runs the same steps, so both sides see
exactly the same logits as long as the arithmetic is the same.

Shapes: one frame's tokens are (D, H, W) int64 — D residual depths (1 for single-level tokenizers); positions are
flat indices into `tokens.reshape(-1)` (depth-major, then row, then column).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class FrameLayout:
    """The token grid of one frame and the vocabulary it is drawn from."""

    depth: int  # D
    height: int  # H (token rows)
    width: int  # W (token columns)
    vocab_size: int  # K

    @property
    def numel(self) -> int:
        return self.depth * self.height * self.width


class EntropyModel(nn.Module):
    """Base class of every entropy model. Subclasses implement `schedule` and `step_logits`; `frame_logits` has a
    generic (step-by-step) implementation that subclasses override with a single teacher-forced pass."""

    name: str = ""  # registry name, set by @register_entropy_model
    vocab_size: int

    def schedule(self, layout: FrameLayout) -> list[torch.Tensor]:
        """Coding steps of one frame: int64 tensors of flat positions, disjoint, together covering
        range(layout.numel). Deterministic for a layout."""
        raise NotImplementedError

    def step_logits(self, tokens: torch.Tensor, known: torch.Tensor, prev: torch.Tensor | None,
                    layout: FrameLayout, step: int) -> torch.Tensor:
        """(n, K) float32 logits for the n positions of `schedule(layout)[step]`.

        tokens: (D, H, W) int64, meaningful only where `known` (D, H, W) bool is true (the positions of earlier
        steps); prev: (D, H, W) tokens of the previous frame, or None at an intra frame."""
        raise NotImplementedError

    def frame_logits(self, tokens: torch.Tensor, prev: torch.Tensor | None, layout: FrameLayout) -> torch.Tensor:
        """(D·H·W, K) logits of every position of a fully known frame, each as the coder sees it (teacher forcing).
        Training and bit estimates use this; it must equal what `step_logits` gives step by step."""
        out = torch.empty(layout.numel, layout.vocab_size, dtype=torch.float32, device=tokens.device)
        known = torch.zeros(layout.numel, dtype=torch.bool, device=tokens.device)
        for i, pos in enumerate(self.schedule(layout)):
            out[pos] = self.step_logits(tokens, known.view(tokens.shape), prev, layout, i).float()
            known[pos] = True
        return out

    def model_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (saved in config.json)."""
        raise NotImplementedError


_ENTROPY_MODELS: dict[str, Callable[..., EntropyModel]] = {}


def register_entropy_model(name: str):
    """Class decorator: `build_entropy_model(name, **config)` constructs the class."""

    def deco(cls):
        if name in _ENTROPY_MODELS:
            raise ValueError(f"entropy model {name!r} registered twice")
        cls.name = name
        _ENTROPY_MODELS[name] = cls
        return cls

    return deco


def registered_entropy_models() -> list[str]:
    return sorted(_ENTROPY_MODELS)


def build_entropy_model(name: str, **config: Any) -> EntropyModel:
    if name not in _ENTROPY_MODELS:
        raise ConfigError("entropy.model.name", f"unknown entropy model {name!r}",
                          f"use one of {registered_entropy_models()}")
    return _ENTROPY_MODELS[name](**config)


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_entropy_model(model: EntropyModel, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write config.json ({"name", "config", "tokenizer_hash"?, ...extra}) and model.safetensors to `out_dir`."""
    from ..models.pretrained import atomic_write_text, save_safetensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), out / WEIGHTS_FILE)
    meta = {"name": model.name, "config": model.model_config(), **(extra or {})}
    atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_entropy_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[EntropyModel, dict]:
    """Rebuild a saved entropy model (strict keys) in eval mode. `path`: the directory `save_entropy_model` wrote,
    or a directory holding it as `model/` (what `vqforge entropy train` writes)."""
    from ..models.pretrained import load_safetensors, load_state_dict_strict

    p = Path(path)
    if not (p / CONFIG_FILE).is_file() and (p / "model" / CONFIG_FILE).is_file():
        p = p / "model"
    if not (p / CONFIG_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: not an entropy model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})\n"
                              "  fix: pass the directory `vqforge entropy train` wrote, or its model/ folder")
    meta = json.loads((p / CONFIG_FILE).read_text())
    model = build_entropy_model(meta["name"], **meta["config"])
    load_state_dict_strict(model, load_safetensors(p / WEIGHTS_FILE, map_location), str(p / WEIGHTS_FILE))
    return model.to(map_location).eval(), meta


def entropy_model_hash(model: EntropyModel) -> str:
    """SHA-256 over the model's name, config and every state tensor (bytes, dtype, shape), in key order."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": model.name, "config": model.model_config()}, sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
