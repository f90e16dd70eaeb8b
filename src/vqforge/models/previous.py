"""Checkpoints of the user's previous system: what they hold, in vqforge's key names.

Two layouts, both `torch.save` pickles, read with the restricted unpickler (no pickled code runs):

- first version (`train/trainVqVae.py`, files `checkpoint_step{N}.pth.tar`, `..._final.pth.tar`,
  `bestmodel_*.pth.tar`): `{"steps", "state_dict", "optimizer", "scheduler"}` plus, for taming models,
  `"optimizer_disc"`, and for the other models (VQ-VAE-2) `"discriminator_state"` + `"optimizer_disc"` when the GAN
  was on. `state_dict` is the inner model's own state dict (the adapter delegated `state_dict()` to it, no prefix).
  A taming model's state dict includes its Lightning `loss` module: `loss.discriminator.*` (the discriminator that
  trained) and `loss.perceptual_loss.*` (LPIPS, which vqforge ships itself). The VQ-VAE-2 model registered three
  aliases of its own submodules (`encoder` = `encoders.0`, `decoder` = `decoders.0`, `vq_vae` = `codebooks`), so its
  state dict holds those tensors twice.
- later versions (`{VQGAN,RVQ-VQGAN,RVQ-VQGAN-1,PQ-GAN}/train/train.py`, files `checkpoint_step{N}.pt`,
  `best_*_step{N}.pt`): `{"step", "model", "opt_ae", "opt_disc", "config", "metrics"}`. The RVQ/PQ adapters
  registered the taming model as `_model`, so keys start with `_model.`; the VQGAN adapter did not register it at
  all, so its files hold an empty `model` (no weights).

Steps: both systems saved right after training step N under the number N, and resumed by training step N again.
vqforge counts completed steps, so such a file continues with step N + 1 (nothing is trained twice). The later
system's final save is the exception: it is numbered `num_steps` after `num_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch

from ..config.schema import ModelConfig
from ..errors import CheckpointError
from ..safe_pickle import load_checkpoint

Layout = Literal["first", "later"]

# the VQ-VAE-2 model's aliases of its own submodules -> the modules they alias
VQVAE2_ALIASES = {"encoder.": "encoders.0.", "decoder.": "decoders.0.", "vq_vae.": "codebooks."}
# buffers (never in an optimizer): BatchNorm statistics, ActNorm's flag, VQ-VAE-2's codebook buffers
_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked", ".initialized")
_VQVAE2_CODEBOOK_BUFFERS = (".embed", ".embed_avg", ".cluster_size")
# taming optimizers of the previous system (configure_optimizers): parameter groups in this order
TAMING_OPT_GROUPS = {"VQModel": ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv"),
                     "EMAVQ": ("encoder", "decoder", "quant_conv", "post_quant_conv"),
                     "GumbelVQ": ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")}
LAYOUT_NAMES = {"first": "first version (.pth.tar)", "later": "later version (.pt)"}


@dataclass
class PreviousCheckpoint:
    """One checkpoint file of the previous system, as stored (tensors on CPU, the file's key names)."""

    path: Path
    layout: Layout
    model: dict[str, torch.Tensor]  # the model's state dict in file order, `_model.` prefix removed
    discriminator: dict[str, torch.Tensor] | None  # non-taming models: `discriminator_state`
    optimizer: Any  # the autoencoder optimizer's state dict
    optimizer_disc: Any
    scheduler: Any  # first version only: ExponentialLR's state dict
    steps_done: int  # completed training steps
    step_note: str  # how steps_done was read from the file
    config: Mapping | None = None  # later versions store their config


@dataclass
class PreviousWeights:
    """Weights of a previous-system checkpoint under vqforge's key names, with what was left out and why."""

    model: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] | None
    discriminator_source: str  # where in the file the discriminator weights were
    # the model parameters the file's autoencoder optimizer held, in its order (vqforge names)
    optimizer_order: list[str]
    discriminator_order: list[str]
    dropped: list[str] = field(default_factory=list)  # what was read but not used, one line per kind


def is_previous_checkpoint(obj: Any) -> bool:
    """Whether an unpickled object has one of the previous system's two checkpoint layouts."""
    return _layout(obj) is not None


def _layout(obj: Any) -> Layout | None:
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("state_dict"), Mapping) and ("steps" in obj or "optimizer" in obj):
        return "first"
    if isinstance(obj.get("model"), Mapping) and "opt_ae" in obj:
        return "later"
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v)


def _tensor_dict(obj: Any, what: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: its {what!r} entry is not a state dict of tensors\n"
                              "  fix: the file is damaged or was not written by the previous system's trainer")
    return dict(obj)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_previous_checkpoint(path: str | Path) -> PreviousCheckpoint:
    """Read a `.pth.tar` (first version) or `.pt` (later versions) checkpoint of the previous system."""
    path = Path(path)
    obj = load_checkpoint(path)
    return previous_from_object(obj, path)


def previous_from_object(obj: Any, path: Path) -> PreviousCheckpoint:
    layout = _layout(obj)
    if layout is None:
        found = list(obj)[:12] if isinstance(obj, Mapping) else type(obj).__name__
        if isinstance(obj, Mapping) and "state_dict" in obj:
            fix = ("this is a taming-transformers / Lightning checkpoint: import it with `vqforge convert FILE --config "
                   "YAML --out DIR`, or start from its weights with model.init_from")
        elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            fix = "the file holds only weights: start a new run from them with model.init_from (resume needs a training checkpoint)"
        else:
            fix = "resume takes a vqforge run/checkpoint directory or a checkpoint file written by the previous system's trainer"
        raise CheckpointError(
            f"{path}: not a training checkpoint of the previous system (found {found}; expected the keys "
            "'steps', 'state_dict', 'optimizer', 'scheduler' of a .pth.tar or 'step', 'model', 'opt_ae' of a .pt)\n"
            f"  fix: {fix}"
        )
    if layout == "first":
        model = _tensor_dict(obj["state_dict"], "state_dict", path)
        steps = _as_int(obj.get("steps"))
        if steps is None:
            done, note = 0, "the file records no step ('steps' is missing): training starts at step 0, as it did there"
        else:
            done = steps + 1
            note = f"'steps': {steps} is the last step the file trained; continuing with step {done}"
        disc = obj.get("discriminator_state")
        return PreviousCheckpoint(
            path=path, layout=layout, model=_strip_prefix(model, "_model."),
            discriminator=_tensor_dict(disc, "discriminator_state", path) if disc is not None else None,
            optimizer=obj.get("optimizer"), optimizer_disc=obj.get("optimizer_disc"), scheduler=obj.get("scheduler"),
            steps_done=done, step_note=note,
        )
    model = _tensor_dict(obj["model"], "model", path)
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    step = _as_int(obj.get("step"))
    total = _as_int(((config or {}).get("train") or {}).get("num_steps")) if isinstance((config or {}).get("train"), Mapping) else None
    if step is None:
        done, note = 0, "the file records no step: training starts at step 0, as it did there"
    elif total is not None and step == total:
        done, note = step, f"'step': {step} is the final save after {step} steps; continuing with step {step}"
    else:
        done, note = step + 1, f"'step': {step} is the last step the file trained; continuing with step {step + 1}"
    return PreviousCheckpoint(
        path=path, layout=layout, model=_strip_prefix(model, "_model."), discriminator=None,
        optimizer=obj.get("opt_ae"), optimizer_disc=obj.get("opt_disc"), scheduler=None,
        steps_done=done, step_note=note, config=config,
    )


def _check_supported(ckpt: PreviousCheckpoint, mc: ModelConfig) -> None:
    """Residual and product quantizers of the later versions: their key layout is not read yet."""
    margs = (ckpt.config or {}).get("model_args") if isinstance((ckpt.config or {}).get("model_args"), Mapping) else {}
    file_levels = _as_int(margs.get("rvq_levels", margs.get("num_quantizers", 1))) or 1
    variant = margs.get("model_variant")
    what = None
    if variant == "PQEMAVQ" or mc.variant == "PQEMAVQ":
        what = "a product-quantized model (model_variant PQEMAVQ)"
    elif file_levels > 1 or mc.quantizer.rvq_levels > 1:
        levels = max(file_levels, mc.quantizer.rvq_levels)
        what = f"a residual-VQ model ({levels} levels over one shared codebook, keys quantize.embedding.*)"
    if what is not None:
        raise CheckpointError(
            f"{ckpt.path}: holds {what}; vqforge does not read this checkpoint layout yet (only the taming "
            "VQModel/EMAVQ and VQ-VAE-2 checkpoints of the previous system are supported so far)\n"
            "  fix: start a new run without resuming from this file, or keep the file until vqforge's model "
            "families read the previous system's RVQ/PQ key names"
        )


def _is_param_name(key: str, family: str) -> bool:
    if key.endswith(_BUFFER_SUFFIXES):
        return False
    if family == "vqvae2" and key.startswith("codebooks.") and key.endswith(_VQVAE2_CODEBOOK_BUFFERS):
        return False
    return True


def _drop_vqvae2_aliases(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Remove `encoder.*`, `decoder.*`, `vq_vae.*`: the same tensors as `encoders.0.*`, `decoders.0.*`,
    `codebooks.*`. They must be equal to what they alias; a difference means the file is not what it claims."""
    out, n = {}, 0
    for k, v in state.items():
        alias = next((a for a in VQVAE2_ALIASES if k.startswith(a)), None)
        if alias is None:
            out[k] = v
            continue
        target = VQVAE2_ALIASES[alias] + k[len(alias):]
        if target not in state or state[target].shape != v.shape or not torch.equal(state[target], v):
            raise CheckpointError(
                f"{path}: {k!r} should be the same tensor as {target!r} (the previous VQ-VAE-2 stored its "
                f"{alias[:-1]!r} alias of {VQVAE2_ALIASES[alias][:-1]!r} twice), but "
                + ("the file has no " + repr(target) if target not in state else "the two differ")
                + "\n  fix: the file is damaged or is not a VQ-VAE-2 checkpoint of the previous system"
            )
        n += 1
    return out, n


def previous_weights(ckpt: PreviousCheckpoint, mc: ModelConfig) -> PreviousWeights:
    """The model (and discriminator) weights of `ckpt` under vqforge's key names for the model `mc` builds.

    Nothing is loaded here; loading is strict (`load_state_dict_strict`), so keys that do not fit are an error."""
    _check_supported(ckpt, mc)
    family = mc.family
    path = ckpt.path
    if not ckpt.model:
        raise CheckpointError(
            f"{path}: holds no model weights: its 'model' entry is empty. The later system's VQGAN trainer saved "
            "the state dict of an adapter that did not register the model, so its .pt files carry only the "
            f"optimizer state and the step ({ckpt.steps_done}), not the weights; they cannot be recovered from this "
            "file\n  fix: start a new run without resuming from it (or resume from a checkpoint that has weights)"
        )
    dropped: list[str] = []
    if family == "taming":
        from .convert import split_taming_state_dict

        parts = split_taming_state_dict(ckpt.model)
        model, disc = parts.model, (parts.discriminator or None)
        disc_source = "state_dict loss.discriminator.*" if ckpt.layout == "first" else "model loss.discriminator.*"
        if parts.dropped:
            dropped.append(f"{len(parts.dropped)} loss.* tensors other than the discriminator (LPIPS network; "
                           "vqforge ships its own)")
        variant = mc.variant or "VQModel"
        groups = TAMING_OPT_GROUPS.get(variant, TAMING_OPT_GROUPS["VQModel"])
        opt_order = [k for g in groups for k in model if k.split(".", 1)[0] == g and _is_param_name(k, family)]
    else:
        model, n_alias = _drop_vqvae2_aliases(ckpt.model, path)
        if n_alias:
            dropped.append(f"{n_alias} duplicate tensors under the aliases encoder.*, decoder.*, vq_vae.* "
                           "(equal to encoders.0.*, decoders.0.*, codebooks.*)")
        disc = None
        disc_source = "discriminator_state"
        if ckpt.discriminator is not None:
            # the previous system's PatchGAN (`model.N.*`) has the layer layout of vqforge's (`main.N.*`)
            disc = {("main." + k[len("model."):] if k.startswith("model.") else k): v
                    for k, v in ckpt.discriminator.items()}
        opt_order = [k for k in model if _is_param_name(k, family)]
    disc_order = [k for k in (disc or {}) if _is_param_name(k, family)]
    return PreviousWeights(model=model, discriminator=disc, discriminator_source=disc_source,
                           optimizer_order=opt_order, discriminator_order=disc_order, dropped=dropped)


__all__ = ["PreviousCheckpoint", "PreviousWeights", "read_previous_checkpoint", "previous_from_object",
           "previous_weights", "is_previous_checkpoint", "LAYOUT_NAMES"]
