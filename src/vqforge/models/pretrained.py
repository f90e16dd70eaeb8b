"""The exported-model format and every way of loading tokenizer weights.

An exported model is a directory:

    config.json         {"vqforge_format": 1, "config": <the fully resolved config>}
    model.safetensors   the tokenizer's state dict (taming key names for taming-family models)
    discriminator.safetensors   optional: PatchGAN weights, for fine-tuning with the GAN loss

A training checkpoint directory (`RUN/checkpoints/step_XXXXXXXX/`) is a superset (it adds `model_ema.safetensors`
and `training_state.*`), and a run directory points at its newest checkpoint through `checkpoints/latest`, so
`load_any` accepts all three. Nothing here unpickles: weights are safetensors, and taming `.ckpt` files go through
the restricted unpickler in `vqforge.safe_pickle`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config.schema import Config
from ..errors import CheckpointError, ConfigError
from ..utils import unwrap_model

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_WEIGHTS_FILE = "model_ema.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# --- writing ---------------------------------------------------------------------------------------------------------
def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old or the complete new file."""
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write tensors as safetensors atomically (temp file, then rename). Tensors are copied to CPU."""
    path = Path(path)
    # safetensors refuses tensors that share memory; fresh contiguous copies never do
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    tmp = _tmp_path(path)
    try:
        save_file(cpu, str(tmp), metadata={"format": "pt", "vqforge_format": str(FORMAT_VERSION)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def config_json_text(cfg: Config) -> str:
    from ..config import to_native_dict

    return json.dumps({"vqforge_format": FORMAT_VERSION, "config": to_native_dict(cfg)}, indent=2) + "\n"


EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cast_weights(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`model`'s state dict with the floating-point weights of its layers cast to `dtype` for a smaller export.

    Kept as they are (float32): every buffer (BatchNorm/ActNorm statistics, EMA codebook statistics, flags and
    counters: accumulators that lose their meaning when rounded) and every tensor of a quantizer (the codebooks: a
    token's code vector stays exactly the trained one). Loading casts back to the model's dtype, so a model loaded
    from a bf16 export computes in float32 with rounded layer weights.
    """
    from ..quantizers.base import Quantizer

    model = unwrap_model(model)
    keep = {f"{prefix}.{k}" if prefix else k
            for prefix, m in model.named_modules() if isinstance(m, Quantizer) for k in m.state_dict()}
    params = {name for name, _ in model.named_parameters()}
    return {k: v.to(dtype) if k in params and k not in keep and v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def save_pretrained(
    model: nn.Module,
    cfg: Config,
    out_dir: str | Path,
    discriminator: nn.Module | Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Export `model` (built from `cfg.model`) to `out_dir`: config.json + model.safetensors
    (+ discriminator.safetensors when a discriminator module or state dict is given). Returns `out_dir`.

    dtype: "bf16"/"fp16" (or the torch dtype) stores the layer weights in that type (`cast_weights`: buffers and
    codebooks stay float32); None or "fp32" stores everything as it is."""
    if isinstance(dtype, str):
        if dtype not in EXPORT_DTYPES:
            raise ConfigError("--dtype", f"{dtype!r} is not an export type", f"use one of {list(EXPORT_DTYPES)}")
        dtype = EXPORT_DTYPES[dtype]
    if not isinstance(cfg, Config):
        raise TypeError(f"save_pretrained needs the full Config, got {type(cfg).__name__}")
    # the export must load again: catch a config that does not validate now, not when someone loads it
    from ..config import to_native_dict

    _parse_native(to_native_dict(cfg))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = unwrap_model(model).state_dict() if dtype in (None, torch.float32) else cast_weights(model, dtype)
    save_safetensors(state, out / WEIGHTS_FILE)
    if discriminator is not None:
        disc = unwrap_model(discriminator).state_dict() if isinstance(discriminator, nn.Module) else discriminator
        save_safetensors(disc, out / DISCRIMINATOR_FILE)
    # config.json last: a directory with a config.json is complete
    atomic_write_text(out / CONFIG_FILE, config_json_text(cfg))
    return out


# --- reading ---------------------------------------------------------------------------------------------------------
def _parse_native(raw: dict) -> Config:
    from ..config import parse_config

    return parse_config(raw, fmt="native")  # written by vqforge: always the native layout


def read_config(model_dir: str | Path) -> Config:
    """The Config stored in an exported model or checkpoint directory."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{model_dir}: no {CONFIG_FILE}, so this is not an exported vqforge model or checkpoint directory\n"
            "  fix: pass a directory written by `vqforge export` / `vqforge convert`, a run directory, or a "
            "checkpoints/step_* directory; import a taming .ckpt with `vqforge convert CKPT --config YAML --out DIR`"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})\n  fix: re-export the model") from None
    if not isinstance(data, dict) or "config" not in data or "vqforge_format" not in data:
        raise CheckpointError(f"{path}: not a vqforge config.json (needs 'vqforge_format' and 'config')\n"
                              "  fix: pass a directory written by vqforge")
    if data["vqforge_format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {data['vqforge_format']!r}, this vqforge reads version "
                              f"{FORMAT_VERSION}\n  fix: use the vqforge version that wrote it")
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{path}: 'config' is not a mapping\n  fix: re-export the model with `vqforge export`")
    try:
        return _parse_native(data["config"])
    except ConfigError as e:
        raise CheckpointError(
            f"{path}: the saved config does not fit this vqforge version's schema:\n  {e}\n"
            "  fix: load it with the vqforge version that wrote it, or edit config.json to the current schema"
        ) from e


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file\n  fix: check the path; an exported model directory "
                              f"holds {WEIGHTS_FILE} next to {CONFIG_FILE}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as safetensors ({e})\n  fix: the file is damaged or "
                              "incomplete; export or copy it again") from e


def _mismatch_hints(missing: list[str], unexpected: list[str]) -> list[str]:
    """Likely causes of a key mismatch, from the key names alone."""
    hints = []
    both = missing + unexpected

    def any_in(keys: list[str], *parts: str) -> bool:
        return any(p in k for k in keys for p in parts)

    if any_in(unexpected, "cluster_size", "embed_avg") and not any_in(missing, "cluster_size", "embed_avg"):
        hints.append("the file has an EMA codebook (EMAVQ) but the model does not: use variant EMAVQ "
                     "(taming YAML: target taming.models.vqgan.EMAVQ)")
    if any_in(missing, "cluster_size", "embed_avg") and not any_in(unexpected, "cluster_size", "embed_avg"):
        hints.append("the model has an EMA codebook (EMAVQ) but the file does not: use variant VQModel "
                     "(or GumbelVQ) as the weights were trained")
    if any_in(unexpected, "quantize.proj.", "quantize.embed.weight"):
        hints.append("the file is a GumbelVQ model (quantize.proj / quantize.embed): use variant GumbelVQ")
    if any_in(missing, "quantize.proj.", "quantize.embed.weight"):
        hints.append("the model is GumbelVQ but the file is not: use the variant the weights were trained with")
    if any_in(both, "quantize.levels.", "quantize.shared."):
        hints.append("residual VQ settings differ (quantizer.rvq_levels / quantizer.shared_codebook)")
    if any_in(unexpected, "quantize.used"):
        hints.append("the file was trained with taming's index remapping (remap), which vqforge does not support")
    if any(k.startswith("module.") for k in unexpected):
        hints.append("keys start with 'module.': the weights were saved from a DistributedDataParallel wrapper")
    if any(k.startswith("loss.") for k in unexpected):
        hints.append("the file holds loss/discriminator weights (loss.*): import it with `vqforge convert`")
    if any_in(unexpected, "maintenance") or any_in(missing, "maintenance"):
        hints.append("codebook maintenance settings differ (quantizer.kmeans_init / quantizer.restart_unused_steps)")
    return hints


def _preview(keys: list[str], n: int = 12) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`; every key must match in name and shape, else CheckpointError naming them."""
    model = unwrap_model(model)
    describe = ""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "family"):
        describe = f" (family {cfg.family}" + (f", variant {cfg.variant}" if getattr(cfg, "variant", None) else "") + ")"
    try:
        # strict=False only to collect both key lists; any mismatch is raised below
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as e:  # shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CheckpointError(
            f"{source}: the weights do not fit the model{describe}: tensor shapes differ:\n  "
            + "\n  ".join(lines[:12] or [str(e)])
            + "\n  likely cause: the config's sizes (n_embed, embed_dim, ddconfig ch / ch_mult / z_channels, ...) "
            "differ from the ones the weights were trained with\n"
            "  fix: build the model from the config the weights were trained with"
        ) from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        parts = [f"{source}: the weights do not fit the model{describe}:"]
        if missing:
            parts.append(f"  missing from the file ({len(missing)}): {_preview(missing)}")
        if unexpected:
            parts.append(f"  unexpected in the file ({len(unexpected)}): {_preview(unexpected)}")
        for h in _mismatch_hints(missing, unexpected) or ["the config (family / variant / architecture) is not the "
                                                          "one the weights were trained with"]:
            parts.append(f"  likely cause: {h}")
        parts.append("  fix: use the config the weights were trained with (wrong config or variant)")
        raise CheckpointError("\n".join(parts))


def _load_dir(model_dir: Path, weights_file: str, map_location: str | torch.device) -> tuple[nn.Module, Config]:
    from . import registry

    cfg = read_config(model_dir)
    weights = model_dir / weights_file
    if not weights.is_file():
        raise CheckpointError(f"{model_dir}: has {CONFIG_FILE} but no {weights_file}\n  fix: the export or checkpoint "
                              "is incomplete; export it again")
    state = load_safetensors(weights)
    model = registry.build(cfg.model)
    load_state_dict_strict(model, state, str(weights))
    return model.to(map_location).eval(), cfg


def from_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported model (config.json + model.safetensors) in eval mode. A checkpoint directory or a run
    directory (its latest checkpoint) works too."""
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"{path}: is a file\n  fix: pass the directory written by `vqforge export` or "
                              "`vqforge convert` (it holds config.json and model.safetensors)")
    model, _ = _load_dir(resolve_model_dir(path), WEIGHTS_FILE, map_location)
    return model


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint directory of a run: the one `checkpoints/latest` names (relative to `checkpoints/`, or
    absolute), or, without that pointer (a run copied by hand), the highest `checkpoints/step_*` that holds a
    config.json. None when the run has neither."""
    ckpts = Path(run_dir) / "checkpoints"
    latest = ckpts / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        return Path(name) if Path(name).is_absolute() else ckpts / name
    steps = sorted(d for d in ckpts.glob("step_*") if (d / CONFIG_FILE).is_file()) if ckpts.is_dir() else []
    return steps[-1] if steps else None


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding config.json + weights: `path` itself, or for a run directory its latest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: does not exist\n  fix: give an exported model, a checkpoint or a run directory")
    if (p / CONFIG_FILE).is_file():
        return p
    target = latest_checkpoint(p)
    if target is not None:
        if not (target / CONFIG_FILE).is_file():
            raise CheckpointError(f"{p / 'checkpoints' / 'latest'}: names {target}, which holds no {CONFIG_FILE}\n"
                                  "  fix: the checkpoint was removed or is incomplete; pass a checkpoints/step_* "
                                  "directory directly")
        return target
    if (p / "model" / CONFIG_FILE).is_file():  # a finished run's own export
        return p / "model"
    raise CheckpointError(
        f"{p}: not an exported model (no {CONFIG_FILE}), checkpoint directory, or run directory (no checkpoints/latest)\n"
        "  fix: pass a directory written by `vqforge train`, `vqforge export` or `vqforge convert`"
    )


def load_any(path: str | Path, ema: bool = False, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """(model in eval mode, Config) from an exported dir, a checkpoint dir, or a run dir (its latest checkpoint).

    `ema=True` loads the weight-EMA copy (`model_ema.safetensors`) of a checkpoint.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix == ".safetensors" and (p.parent / CONFIG_FILE).is_file():
            return _load_dir(p.parent, p.name, map_location)
        if p.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{p}: a pickle checkpoint (taming-transformers, or the previous system's .pth.tar / .pt) does not "
                "say which model it holds\n"
                f"  fix: import it first: `vqforge convert {p} --config CONFIG --out DIR` (CONFIG: the taming YAML or "
                "the JSON it was trained with), then use DIR"
            )
        raise CheckpointError(f"{p}: not a model directory\n  fix: pass an exported model, checkpoint or run directory")
    model_dir = resolve_model_dir(p)
    if ema:
        if not (model_dir / EMA_WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"{model_dir}: has no {EMA_WEIGHTS_FILE} (weight EMA was off: train.ema_decay null, or this is an "
                "export, which holds one set of weights)\n  fix: load without --ema / ema=False"
            )
        return _load_dir(model_dir, EMA_WEIGHTS_FILE, map_location)
    return _load_dir(model_dir, WEIGHTS_FILE, map_location)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights into an already built `model` (`model.init_from`), with strict key checking.

    `path`: an exported / checkpoint / run directory, a `.safetensors` file, or a pickle checkpoint such as a
    taming-transformers `.ckpt` or a previous-system `.pth.tar` / `.pt` (read without running code; `loss.*`
    entries are dropped).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: does not exist\n  fix: set model.init_from to an exported model, checkpoint or "
                              "run directory, a .safetensors file, or a taming .ckpt")
    if p.is_dir():
        source = resolve_model_dir(p) / WEIGHTS_FILE
        state = load_safetensors(source)
    elif p.suffix == ".safetensors":
        source, state = p, load_safetensors(p)
    else:
        from ..safe_pickle import extract_state_dict, load_checkpoint
        from .convert import split_taming_state_dict
        from .previous import is_previous_checkpoint, previous_from_object, previous_weights

        source = p
        obj = load_checkpoint(p)
        model_cfg = getattr(unwrap_model(model), "config", None)
        if is_previous_checkpoint(obj) and model_cfg is not None:
            # a .pth.tar / .pt of the user's previous system: its weights under vqforge's key names
            state = previous_weights(previous_from_object(obj, p), model_cfg).model
        else:
            state = split_taming_state_dict(extract_state_dict(obj, str(p))).model
    load_state_dict_strict(model, state, str(source))


__all__ = [
    "save_pretrained", "cast_weights", "EXPORT_DTYPES", "from_pretrained", "load_any", "load_weights", "read_config", "resolve_model_dir", "latest_checkpoint",
    "load_state_dict_strict", "save_safetensors", "load_safetensors", "atomic_write_text",
    "FORMAT_VERSION", "CONFIG_FILE", "WEIGHTS_FILE", "EMA_WEIGHTS_FILE", "DISCRIMINATOR_FILE",
]
