"""`vqforge convert`: import a taming-transformers checkpoint (a PyTorch Lightning `.ckpt`) or a checkpoint of the
user's previous system (`.pth.tar` / `.pt`, see `previous.py`) as an exported model.

    vqforge convert last.ckpt --config 2020-11-09T13-31-51-project.yaml --out vqgan_f16_1024/
    vqforge convert checkpoint_step10000.pth.tar --config multitask/task1.json --out task1_model/

The YAML is the taming config the checkpoint was trained with (read by the taming-YAML reader into the one schema).
The checkpoint is read without running pickled code and without Lightning. Its `state_dict` is split:
`loss.discriminator.*` -> `discriminator.safetensors` (prefix removed, for fine-tuning with the GAN loss),
other `loss.*` (the LPIPS network, which vqforge ships itself) dropped, the rest loaded strictly into the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config.schema import Config
from ..errors import CheckpointError
from ..safe_pickle import extract_state_dict, load_checkpoint
from .pretrained import DISCRIMINATOR_FILE, WEIGHTS_FILE, load_state_dict_strict, save_pretrained
from .previous import is_previous_checkpoint

DISCRIMINATOR_PREFIX = "loss.discriminator."
LOSS_PREFIX = "loss."


@dataclass
class SplitStateDict:
    """A taming state dict separated into its parts."""

    model: dict[str, torch.Tensor]  # encoder / decoder / quantize / quant convs
    discriminator: dict[str, torch.Tensor]  # keys without "loss.discriminator."
    dropped: list[str] = field(default_factory=list)  # other loss.* keys (LPIPS network, ...)


def split_taming_state_dict(state: Mapping[str, torch.Tensor]) -> SplitStateDict:
    """Split a taming-transformers `state_dict` into model weights, discriminator weights and dropped loss keys."""
    out = SplitStateDict(model={}, discriminator={})
    for k, v in state.items():
        if k.startswith(DISCRIMINATOR_PREFIX):
            out.discriminator[k[len(DISCRIMINATOR_PREFIX):]] = v
        elif k.startswith(LOSS_PREFIX):
            out.dropped.append(k)
        else:
            out.model[k] = v
    return out


@dataclass
class ConvertReport:
    out_dir: Path
    model_tensors: int
    discriminator_tensors: int
    dropped: list[str]
    global_step: int | None
    epoch: int | None
    source: str = ""  # set for checkpoints of the previous system
    discriminator_source: str = "loss.discriminator.*"


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _read_training_config(path: str | Path) -> Config:
    """The config the checkpoint was trained with. Its "no effect" notices concern training, not conversion."""
    from ..config import load_config_with_warnings

    cfg, _ = load_config_with_warnings(path)
    return cfg


def taming_model_from_checkpoint(ckpt: Any, cfg: Config, source: str) -> tuple[torch.nn.Module, SplitStateDict]:
    """The model of a loaded taming checkpoint (`load_checkpoint`'s result), built from `cfg` with its weights loaded
    strictly, in memory; and the checkpoint's split state dict (discriminator, dropped loss keys)."""
    from . import registry

    parts = split_taming_state_dict(extract_state_dict(ckpt, source))
    if not parts.model:
        raise CheckpointError(f"{source}: its state_dict holds only loss.* weights, no model\n"
                              "  fix: pass the checkpoint of the VQGAN itself")
    model = registry.build(cfg.model)
    load_state_dict_strict(model, parts.model, source)
    return model, parts


def convert_taming_checkpoint(ckpt_path: str | Path, taming_yaml_path: str | Path | None, out_dir: str | Path,
                              *, config: Config | None = None) -> ConvertReport:
    """Convert a taming `.ckpt` into an exported vqforge model directory (config.json + model.safetensors
    [+ discriminator.safetensors]). `config` (a `Config`) may be given instead of reading `taming_yaml_path`."""
    if config is None and taming_yaml_path is None:
        raise ValueError("give taming_yaml_path or config")
    cfg = config if config is not None else _read_training_config(taming_yaml_path)
    ckpt = load_checkpoint(ckpt_path)
    if is_previous_checkpoint(ckpt):
        return _convert_previous(ckpt, Path(ckpt_path), cfg, out_dir)
    model, parts = taming_model_from_checkpoint(ckpt, cfg, str(ckpt_path))
    out = save_pretrained(model, cfg, out_dir, discriminator=parts.discriminator or None)
    meta = ckpt if isinstance(ckpt, Mapping) else {}
    return ConvertReport(
        out_dir=out,
        model_tensors=len(parts.model),
        discriminator_tensors=len(parts.discriminator),
        dropped=parts.dropped,
        global_step=_int_or_none(meta.get("global_step")),
        epoch=_int_or_none(meta.get("epoch")),
    )


def _convert_previous(obj: Any, path: Path, cfg: Config, out_dir: str | Path) -> ConvertReport:
    """A checkpoint of the user's previous system (`.pth.tar` / `.pt`): its weights under vqforge's key names."""
    from . import registry
    from .previous import LAYOUT_NAMES, previous_from_object, previous_weights

    ckpt = previous_from_object(obj, path)
    weights = previous_weights(ckpt, cfg.model)
    model = registry.build(cfg.model)
    load_state_dict_strict(model, weights.model, str(path))
    disc = weights.discriminator
    if disc:  # checked against the config's discriminator, so a later GAN fine-tune can load it
        from ..losses.discriminator import NLayerDiscriminator

        lc = cfg.loss
        load_state_dict_strict(NLayerDiscriminator(lc.disc_in_channels, lc.disc_ndf, lc.disc_num_layers, lc.disc_norm),
                               disc, f"{path} ({weights.discriminator_source})")
    out = save_pretrained(model, cfg, out_dir, discriminator=disc or None)
    return ConvertReport(out_dir=out, model_tensors=len(weights.model), discriminator_tensors=len(disc or {}),
                         dropped=weights.dropped, global_step=ckpt.steps_done, epoch=None,
                         source=f"a checkpoint of the previous system, {LAYOUT_NAMES[ckpt.layout]}",
                         discriminator_source=weights.discriminator_source)


def convert_main(args) -> int:
    """CLI: `vqforge convert CKPT --config CONFIG --out DIR` (CONFIG: taming YAML, the previous system's JSON, or
    native)."""
    rep = convert_taming_checkpoint(args.ckpt, args.config, args.out)
    if rep.source:
        trained = f"{rep.global_step} steps" if rep.global_step is not None else ""
        print(f"converted {args.ckpt} ({rep.source}" + (f", {trained}" if trained else "") + f") -> {rep.out_dir}")
    else:
        trained = ", ".join(f"{k} {v}" for k, v in (("global_step", rep.global_step), ("epoch", rep.epoch)) if v is not None)
        print(f"converted {args.ckpt}" + (f" ({trained})" if trained else "") + f" -> {rep.out_dir}")
    print(f"  {WEIGHTS_FILE}: {rep.model_tensors} tensors (strict key match)")
    if rep.discriminator_tensors:
        print(f"  {DISCRIMINATOR_FILE}: {rep.discriminator_tensors} tensors ({rep.discriminator_source}, for fine-tuning)")
    if rep.source:
        for d in rep.dropped:
            print(f"  not converted: {d}")
    elif rep.dropped:
        print(f"  dropped {len(rep.dropped)} other loss.* tensors (LPIPS network; vqforge ships its own)")
    print(f"  load it with vqforge.from_pretrained({str(rep.out_dir)!r}) or `vqforge eval {rep.out_dir} --data ...`")
    return 0


__all__ = ["convert_taming_checkpoint", "taming_model_from_checkpoint", "convert_main", "split_taming_state_dict", "SplitStateDict", "ConvertReport"]
